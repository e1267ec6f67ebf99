"""BatchNorm statistics and dropout masks under SAMModel, against a per-shard loop written with
plain Keras calls and variable assignment (the way tf_keras' SAM does it)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_msam import SAMModel

B, M, RHO, LR = 12, 4, 0.2, 0.1


def bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(6),
            keras.layers.BatchNormalization(momentum=0.8),
            keras.layers.Activation("relu"),
            keras.layers.Dense(1),
        ]
    )


def batch(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, 3)).astype("float32") * 2 + 1, rng.normal(size=(B, 1)).astype("float32")


def loop_reference(model, x, y, frozen):
    """One m-SAM step by assigning perturbed weights; returns (expected weights, expected BN stats)."""
    loss_fn = keras.losses.MeanSquaredError()
    weights = model.trainable_variables
    w0 = [v.numpy() for v in weights]
    stats0 = [v.numpy() for v in model.non_trainable_variables]
    total = [np.zeros_like(w) for w in w0]
    for start in range(0, B, M):
        xs, ys = x[start:start + M], y[start:start + M]
        running = [v.numpy() for v in model.non_trainable_variables]
        if frozen:  # inference mode with the statistics of the start of the step
            for v, s in zip(model.non_trainable_variables, stats0):
                v.assign(s)
        with tf.GradientTape() as tape:
            loss = loss_fn(ys, model(xs, training=not frozen))
        g = [t.numpy() for t in tape.gradient(loss, weights)]
        if frozen:  # statistics come from a training-mode pass at w
            for v, s in zip(model.non_trainable_variables, running):
                v.assign(s)
            model(xs, training=True)
        stats = [v.numpy() for v in model.non_trainable_variables]
        norm = np.sqrt(sum(np.sum(t**2) for t in g))
        for v, w, gi in zip(weights, w0, g):
            v.assign(w + RHO * gi / norm)
        with tf.GradientTape() as tape:
            loss = loss_fn(ys, model(xs, training=True))
        total = [t + M / B * gi.numpy() for t, gi in zip(total, tape.gradient(loss, weights))]
        for v, w in zip(weights, w0):
            v.assign(w)
        for v, s in zip(model.non_trainable_variables, stats):  # never keep statistics from w + eps
            v.assign(s)
    expected_weights = [w - LR * g for w, g in zip(w0, total)]
    expected_stats = [v.numpy() for v in model.non_trainable_variables]
    for v, s in zip(model.non_trainable_variables, stats0):
        v.assign(s)
    return expected_weights, expected_stats


@pytest.mark.parametrize("bn_in_ascent", ["batch", "frozen"])
def test_batchnorm_step_and_moving_statistics_match_the_per_shard_loop(bn_in_ascent):
    x, y = batch()
    reference = bn_model()
    reference.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    reference.fit(x, y, epochs=1, verbose=0)  # moving statistics away from their initial values
    reference_weights = reference.get_weights()
    expected_weights, expected_stats = loop_reference(reference, x, y, frozen=bn_in_ascent == "frozen")

    inner = bn_model()
    inner.set_weights(reference_weights)
    model = SAMModel(inner, rho=RHO, m=M, bn_in_ascent=bn_in_ascent)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    model.train_on_batch(x, y)

    for got, want in zip(model.inner.trainable_variables, expected_weights):
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=2e-6)
    for got, want in zip(model.inner.non_trainable_variables, expected_stats):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # the statistics of ERM on the whole batch are different: the shards really were separate
    erm = bn_model()
    erm.set_weights(reference_weights)
    erm(x, training=True)
    assert not np.allclose(erm.non_trainable_variables[0].numpy(), expected_stats[0], atol=1e-4)


def test_frozen_bn_ascent_differs_from_ghost_bn_ascent():
    x, y = batch()
    results = []
    for mode in ("batch", "frozen"):
        inner = bn_model()
        model = SAMModel(inner, rho=RHO, m=M, bn_in_ascent=mode)
        model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
        model.train_on_batch(x, y)
        results.append(model.inner.get_weights()[0])
    assert np.max(np.abs(results[0] - results[1])) > 1e-4


class HalvesGap(keras.metrics.Metric):
    """Mean |y_pred[first half] - y_pred[second half]|: zero when both halves see the same masks."""

    def __init__(self, name="halves_gap"):
        super().__init__(name=name)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        half = tf.shape(y_pred)[0] // 2
        self.total.assign(tf.reduce_mean(tf.abs(y_pred[:half] - y_pred[half:])))

    def result(self):
        return self.total


def dropout_model():
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dropout(0.5), keras.layers.Dense(1)]
    )


def test_dropout_mask_is_shared_by_both_passes_of_a_shard_and_differs_between_shards():
    """Documented choice: each shard draws its own mask (as separate ERM steps would), and the ascent and
    the perturbed pass of a shard use the same mask, so sharpness is measured on one sub-network."""
    x, y = batch()
    x = np.concatenate([x[:6], x[:6]])  # two identical halves = two shards with identical inputs
    y = np.concatenate([y[:6], y[:6]])
    model = SAMModel(dropout_model(), rho=1e-4, m=6)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse", metrics=[HalvesGap()])
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["halves_gap"] > 1e-3  # the two shards used different masks
    # same mask at w and w + eps: sharpness is first order in rho (<= rho * ||g|| up to O(rho^2))
    assert abs(logs["sharpness"]) <= 1.5 * 1e-4 * logs["grad_norm"]
    # and the next step draws new masks (the seed state moved on)
    seeds = [v.numpy() for v in model.inner.non_trainable_variables]
    model.train_on_batch(x, y)
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(seeds, model.inner.non_trainable_variables))
