"""A CLIP-style dual encoder over CheXNet features and report text (free of Prefect).

Image tower: the study's pooled vectors (standardized with training statistics, averaged over the views
present) -> 2-layer MLP -> unit vector. Text tower: word embeddings -> bidirectional GRU -> masked mean ->
linear -> unit vector. Both meet in one `dim`-dimensional space; similarity is the dot product.
Loss: symmetric InfoNCE (Radford et al. 2021) with a learned temperature (log-parametrized, capped at
100 as in CLIP). Reports with identical text in one batch are not counted as negatives of each other
(IU has hundreds of "no acute cardiopulmonary abnormality."), which would otherwise teach contradictions.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers, ops


class DualEncoder(keras.Model):
    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        dim: int = 256,
        embed_dim: int = 256,
        text_units: int = 256,
        hidden: int = 512,
        dropout: float = 0.1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size, self.feature_dim, self.dim, self.embed_dim, self.text_units, self.hidden, self.dropout_rate = (
            vocab_size,
            feature_dim,
            dim,
            embed_dim,
            text_units,
            hidden,
            dropout,
        )
        self.feature_mean = self.add_weight(
            shape=(feature_dim,), initializer="zeros", trainable=False, name="feature_mean"
        )
        self.feature_std = self.add_weight(
            shape=(feature_dim,), initializer="ones", trainable=False, name="feature_std"
        )
        self.image_hidden = layers.Dense(hidden, activation="gelu", name="image_hidden")
        self.image_out = layers.Dense(dim, name="image_projection")
        self.embedding = layers.Embedding(vocab_size, embed_dim, name="embedding")
        self.rnn = layers.Bidirectional(layers.GRU(text_units, return_sequences=True), name="text_rnn")
        self.text_out = layers.Dense(dim, name="text_projection")
        self.dropout = layers.Dropout(dropout)
        self.log_scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(math.log(1 / 0.07)), name="log_scale"
        )

    def get_config(self):
        return {
            "vocab_size": self.vocab_size,
            "feature_dim": self.feature_dim,
            "dim": self.dim,
            "embed_dim": self.embed_dim,
            "text_units": self.text_units,
            "hidden": self.hidden,
            "dropout": self.dropout_rate,
            **super().get_config(),
        }

    def embed_images(self, pooled, view_mask, training=False):
        """pooled (B,V,D), view_mask (B,V) -> (B,dim) unit vectors."""
        x = (ops.cast(pooled, "float32") - self.feature_mean) / self.feature_std
        x = ops.sum(x * view_mask[..., None], axis=1) / ops.maximum(ops.sum(view_mask, axis=1, keepdims=True), 1.0)
        x = self.image_out(self.dropout(self.image_hidden(x), training=training))
        return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-6)

    def embed_texts(self, tokens, training=False):
        """tokens (B,T) int, 0 = pad -> (B,dim) unit vectors."""
        mask = ops.cast(tokens != 0, "float32")
        x = self.rnn(self.dropout(self.embedding(tokens), training=training), mask=tokens != 0)
        x = ops.sum(x * mask[..., None], axis=1) / ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)
        x = self.text_out(x)
        return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-6)

    def scale(self):
        return ops.minimum(ops.exp(self.log_scale), 100.0)


def info_nce(image_emb, text_emb, scale, text_group):
    """Symmetric InfoNCE; `text_group` (B,) ids equal for identical report texts (not negatives)."""
    logits = scale * ops.matmul(image_emb, ops.transpose(text_emb))
    same = ops.equal(text_group[:, None], text_group[None, :])
    eye = ops.eye(ops.shape(logits)[0], dtype="bool")
    logits = ops.where(ops.logical_and(same, ops.logical_not(eye)), -1e9, logits)
    labels = ops.arange(ops.shape(logits)[0])
    i2t = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    t2i = keras.losses.sparse_categorical_crossentropy(labels, ops.transpose(logits), from_logits=True)
    return (ops.mean(i2t) + ops.mean(t2i)) / 2


def make_train_step(model: DualEncoder, optimizer, clip_norm: float = 5.0):
    @tf.function(reduce_retracing=True)
    def step(pooled, view_mask, tokens, text_group):
        with tf.GradientTape() as tape:
            loss = info_nce(
                model.embed_images(pooled, view_mask, training=True),
                model.embed_texts(tokens, training=True),
                model.scale(),
                text_group,
            )
        grads = tape.gradient(loss, model.trainable_variables)
        grads, _ = tf.clip_by_global_norm(grads, clip_norm)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step
