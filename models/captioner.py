"""LSTM report decoders over CheXNet features: Show-and-Tell and Show-Attend-Tell (free of Prefect).

Both take a study's images as features of up to `max_views` views (IU: frontal + lateral), with a view mask:
* Show-and-Tell (Vinyals et al. 2015): the views' pooled vectors, concatenated in view order (a missing
  view is zeros), are projected to the embedding size and fed to the LSTM as its first input.
* Show-Attend-Tell (Xu et al. 2015): additive (Bahdanau) attention over the 7x7 grid cells of every view
  (2 views -> 98 cells) at each step; masked cells get no weight; the weights are returned for drawing.
Both decoders expose `start(features)` -> state and `step(tokens, state)` -> (logits, state, attention),
which teacher-forced training, greedy decoding and beam search all use.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops


class BahdanauAttention(layers.Layer):
    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.w_features = layers.Dense(units)
        self.w_hidden = layers.Dense(units)
        self.v = layers.Dense(1)

    def call(self, features, projected, hidden, mask):
        """features (B,L,E), projected = w_features(features), hidden (B,U), mask (B,L)
        -> context (B,E), weights (B,L)."""
        score = self.v(ops.tanh(projected + self.w_hidden(hidden)[:, None, :]))[..., 0]
        score = ops.where(mask > 0, score, -1e9)
        weights = ops.softmax(score, axis=-1)
        return ops.sum(features * weights[..., None], axis=1), weights


class Captioner(keras.Model):
    """Shared parts: embedding, LSTM cell, deep output layer, dropout."""

    attention = False
    recurrent_state = ("h", "c")  # what `step` changes; the rest of its state is fixed per study

    def __init__(
        self,
        vocab_size: int,
        max_views: int,
        feature_dim: int,
        embed_dim: int = 256,
        units: int = 512,
        dropout: float = 0.3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size, self.max_views, self.feature_dim, self.embed_dim, self.units, self.dropout_rate = (
            vocab_size,
            max_views,
            feature_dim,
            embed_dim,
            units,
            dropout,
        )
        self.embedding = layers.Embedding(vocab_size, embed_dim, name="embedding")
        self.cell = layers.LSTMCell(units, name="lstm")
        self.dropout = layers.Dropout(dropout)
        self.output_hidden = layers.Dense(embed_dim, name="deep_output")  # Xu et al.'s L_h
        self.logits = layers.Dense(vocab_size, name="logits")
        # Per-channel statistics of the training features, saved with the weights: CNN activations have
        # wildly different scales per channel, and unstandardized they let the LSTM ignore the image.
        self.feature_mean = self.add_weight(
            shape=(feature_dim,), initializer="zeros", trainable=False, name="feature_mean"
        )
        self.feature_std = self.add_weight(
            shape=(feature_dim,), initializer="ones", trainable=False, name="feature_std"
        )

    def standardize(self, values):
        return (ops.cast(values, "float32") - self.feature_mean) / self.feature_std

    def get_config(self):
        return {
            "vocab_size": self.vocab_size,
            "max_views": self.max_views,
            "feature_dim": self.feature_dim,
            "embed_dim": self.embed_dim,
            "units": self.units,
            "dropout": self.dropout_rate,
            **super().get_config(),
        }

    def teacher_forced(self, features, tokens, training=False):
        """Logits (B,T,V) for tokens[:, :T] as inputs (teacher forcing), and attention (B,T,L) or None."""
        state = self.start(features, training=training)
        logits, attention = [], []
        for t in range(tokens.shape[1]):
            step_logits, state, weights = self.step(tokens[:, t], state, training=training)
            logits.append(step_logits)
            attention.append(weights)
        stacked = ops.stack(attention, axis=1) if self.attention else None
        return ops.stack(logits, axis=1), stacked


class ShowAndTell(Captioner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_embedding = layers.Dense(self.embed_dim, name="image_embedding")

    def start(self, features, training=False):
        pooled, view_mask = features["pooled"], features["view_mask"]  # (B,V,D), (B,V)
        flat = ops.reshape(self.standardize(pooled) * view_mask[..., None], (-1, self.max_views * pooled.shape[-1]))
        image = self.dropout(self.image_embedding(flat), training=training)
        batch = ops.shape(flat)[0]
        zeros = ops.zeros((batch, self.units))
        _, state = self.cell(image, [zeros, zeros], training=training)  # the image is the LSTM's first input
        return {"h": state[0], "c": state[1]}

    def step(self, tokens, state, training=False):
        x = self.dropout(self.embedding(tokens), training=training)
        h, (h, c) = self.cell(x, [state["h"], state["c"]], training=training)
        out = ops.tanh(self.output_hidden(self.dropout(h, training=training)) + x)
        return self.logits(self.dropout(out, training=training)), {"h": h, "c": c}, None


class ShowAttendTell(Captioner):
    attention = True

    def __init__(self, *args, attention_units: int = 256, **kwargs):
        super().__init__(*args, **kwargs)
        self.attention_units = attention_units
        self.grid_projection = layers.Dense(self.embed_dim, activation="relu", name="grid_projection")
        self.attend = BahdanauAttention(attention_units, name="attention")
        self.init_h = layers.Dense(self.units, activation="tanh", name="init_h")
        self.init_c = layers.Dense(self.units, activation="tanh", name="init_c")
        self.gate = layers.Dense(self.embed_dim, activation="sigmoid", name="context_gate")  # Xu et al.'s beta

    def get_config(self):
        return {**super().get_config(), "attention_units": self.attention_units}

    def start(self, features, training=False):
        grid, view_mask = features["grid"], features["view_mask"]  # (B,V,cells,D), (B,V)
        cells = grid.shape[2]
        memory = self.grid_projection(ops.reshape(self.standardize(grid), (-1, self.max_views * cells, grid.shape[-1])))
        mask = ops.reshape(ops.repeat(view_mask[:, :, None], cells, axis=2), (-1, self.max_views * cells))
        mean = ops.sum(memory * mask[..., None], axis=1) / ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)
        return {
            "h": self.init_h(mean),
            "c": self.init_c(mean),
            "memory": memory,
            "projected": self.attend.w_features(memory),
            "mask": mask,
        }

    def step(self, tokens, state, training=False):
        x = self.dropout(self.embedding(tokens), training=training)
        context, weights = self.attend(state["memory"], state["projected"], state["h"], state["mask"])
        context = self.gate(state["h"]) * context
        h, (h, c) = self.cell(ops.concatenate([x, context], axis=-1), [state["h"], state["c"]], training=training)
        out = ops.tanh(self.output_hidden(self.dropout(h, training=training)) + x + context)  # deep output
        return self.logits(self.dropout(out, training=training)), {**state, "h": h, "c": c}, weights


ARCHITECTURES = {"show-tell": ShowAndTell, "show-attend-tell": ShowAttendTell}


def masked_loss(tokens_out, logits):
    """Mean cross-entropy over non-pad target tokens (pad id 0)."""
    loss = keras.losses.sparse_categorical_crossentropy(tokens_out, logits, from_logits=True)
    mask = ops.cast(tokens_out != 0, loss.dtype)
    return ops.sum(loss * mask) / ops.maximum(ops.sum(mask), 1.0)


def make_train_step(model: Captioner, optimizer, clip_norm: float = 5.0):
    """A compiled teacher-forced step: inputs are tokens[:, :-1], targets tokens[:, 1:]."""

    @tf.function(reduce_retracing=True)
    def train_step(features, tokens):
        with tf.GradientTape() as tape:
            logits, _ = model.teacher_forced(features, tokens[:, :-1], training=True)
            loss = masked_loss(tokens[:, 1:], logits)
        grads = tape.gradient(loss, model.trainable_variables)
        grads, _ = tf.clip_by_global_norm(grads, clip_norm)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return train_step


def make_scst_step(
    model: Captioner,
    optimizer,
    banned: tuple[int, ...],
    clip_norm: float = 5.0,
    xe_weight: float = 0.0,
    dropout: bool = False,
):
    """Self-critical policy gradient (Rennie et al. 2017): tokens (N,T) are sampled captions with <start> first,
    advantages (N,) their reward minus a baseline's. Loss: -advantage x log-probability of each sampled
    token (pad excluded), averaged over tokens; banned ids are masked as when sampling. Plus `xe_weight` x the
    teacher-forced cross-entropy of the studies' own reports `truth` (B,T) (a mixed objective, Paulus et al.
    2018: it keeps the language of the reports while the reward moves the choice of words). Dropout is off by
    default, as it was when the captions were sampled, so the gradient is that of the sampling distribution;
    `dropout` turns it on in the step (a regularized surrogate, as most SCST code trains)."""
    penalty = tf.constant([-1e9 if i in banned else 0.0 for i in range(model.vocab_size)], tf.float32)

    @tf.function(reduce_retracing=True)
    def scst_step(features, tokens, advantages, study_features=None, truth=None):
        with tf.GradientTape() as tape:
            logits, _ = model.teacher_forced(features, tokens[:, :-1], training=dropout)
            logp = tf.nn.log_softmax(logits + penalty, axis=-1)
            targets = tokens[:, 1:]
            taken = tf.gather(logp, targets, batch_dims=2)
            mask = tf.cast(targets != 0, tf.float32)
            loss = -tf.reduce_sum(advantages[:, None] * taken * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
            if xe_weight and truth is not None:
                truth_logits, _ = model.teacher_forced(study_features, truth[:, :-1], training=dropout)
                loss += xe_weight * masked_loss(truth[:, 1:], truth_logits)
        grads = tape.gradient(loss, model.trainable_variables)
        grads, _ = tf.clip_by_global_norm(grads, clip_norm)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return scst_step


def make_eval_step(model: Captioner):
    @tf.function(reduce_retracing=True)
    def eval_step(features, tokens):
        logits, _ = model.teacher_forced(features, tokens[:, :-1], training=False)
        return masked_loss(tokens[:, 1:], logits)

    return eval_step
