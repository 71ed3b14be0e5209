"""Training the CheXNet encoder from scratch: masked, class-weighted multi-label loss and augmentation.

Free of Prefect and MLflow: `tasks/pretrain.py` drives it. Images arrive as letterboxed uint8 squares.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from radcap.models.encoder import standardize


def augmenter(rotation_degrees: float, zoom: float, shift: float, seed: int) -> keras.Sequential:
    """Small rotations, scaling and shifts (a random crop when zooming in); padding stays black like the
    letterbox. No flips: left and right matter in a radiograph (dextrocardia, situs, side of a finding)."""
    return keras.Sequential(
        [
            keras.layers.RandomRotation(rotation_degrees / 360.0, fill_mode="constant", seed=seed),
            keras.layers.RandomZoom((-zoom, zoom), fill_mode="constant", seed=seed + 1),
            keras.layers.RandomTranslation(shift, shift, fill_mode="constant", seed=seed + 2),
        ],
        name="augment",
    )


def masked_weighted_bce(targets, mask, probs, pos_weight, neg_weight):
    """Mean binary cross-entropy over the (image, unit) pairs the image is annotated for."""
    probs = tf.clip_by_value(probs, 1e-7, 1.0 - 1e-7)
    loss = -(pos_weight * targets * tf.math.log(probs) + neg_weight * (1.0 - targets) * tf.math.log(1.0 - probs))
    return tf.reduce_sum(loss * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


class EncoderTrainer:
    """One screen: a train step and an evaluation step over uint8 image batches, compiled with tf.function
    unless `compiled=False`: tracing DenseNet-121's gradient costs about 37 s on a 2-core CPU against 1.7 s
    per step saved, so a run of a few steps (a smoke test, a tiny fine-tune) finishes sooner eagerly."""

    def __init__(
        self,
        model: keras.Model,
        pos_weight: np.ndarray,
        neg_weight: np.ndarray,
        learning_rate: float,
        augment: keras.Sequential | None,
        compiled: bool = True,
    ):
        self.model = model
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self.augment = augment
        self.pos_weight = tf.constant(pos_weight, tf.float32)
        self.neg_weight = tf.constant(neg_weight, tf.float32)
        if compiled:
            self.train_step = tf.function(self.train_step, reduce_retracing=True)  # type: ignore[method-assign]
            self.eval_step = tf.function(self.eval_step, reduce_retracing=True)  # type: ignore[method-assign]

    def train_step(self, images, targets, mask):
        x = tf.cast(images, tf.float32)[..., None]
        if self.augment is not None:
            x = self.augment(x, training=True)
        x = standardize(tf.squeeze(x, -1))
        with tf.GradientTape() as tape:
            probs = self.model(x, training=True)
            loss = masked_weighted_bce(targets, mask, probs, self.pos_weight, self.neg_weight)
        grads = tape.gradient(loss, self.model.trainable_variables)
        grads, _ = tf.clip_by_global_norm(grads, 5.0)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss

    def eval_step(self, images, targets, mask):
        probs = self.model(standardize(images), training=False)
        return masked_weighted_bce(targets, mask, probs, self.pos_weight, self.neg_weight), probs

    def set_learning_rate(self, value: float) -> None:
        self.optimizer.learning_rate.assign(value)
