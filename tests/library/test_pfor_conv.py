"""Vectorized shards of a conv net (im2col converters in `keras_msam.pfor_conv`) against plain passes."""

import keras
import numpy as np
import pytest

from keras_msam import SAMModel


def small_cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),  # stride 1 SAME
            keras.layers.Conv2D(5, 3, padding="valid", activation="relu"),  # stride 1 VALID
            keras.layers.Conv2D(5, 3, strides=2, padding="same", activation="relu"),  # strided: TF's own
            keras.layers.Conv2D(4, 2, dilation_rate=2, padding="same", activation="relu"),  # dilated, even kernel
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )


def step(shards_per_pass, jit):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 8)
    model = SAMModel(small_cnn(), rho=0.1, m=2, shards_per_pass=shards_per_pass)
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, y)
    return [w.numpy() for w in model.inner.weights]


@pytest.mark.parametrize("jit", [False, pytest.param(True, marks=pytest.mark.slow)])  # XLA: a 10 s compile
def test_vectorized_conv_shards_equal_plain_per_shard_passes(jit):
    plain, vectorized = step(1, jit), step(None, jit)  # 4 plain passes vs one vectorized pass of 4 shards
    moved = max(np.max(np.abs(a - b)) for a, b in zip(plain, [w.numpy() for w in small_cnn().weights]))
    assert moved > 1e-3
    for a, b in zip(plain, vectorized):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
