"""Small data and models that the library tests make themselves (the library tests import no recipe)."""

import keras
import numpy as np


def regression(n=20, d=30, n_test=1000, seed=0):
    """(x [n, d], y [n, 1], x_test, y_test) float32: x ~ N(0, I_d / d), y = <x, beta> for a 3-sparse beta."""
    rng = np.random.default_rng(seed)
    beta = np.zeros(d)
    beta[:3] = 1.0
    x, x_test = (rng.normal(size=(k, d)) / np.sqrt(d) for k in (n, n_test))
    return tuple(a.astype("float32") for a in (x, (x @ beta)[:, None], x_test, (x_test @ beta)[:, None]))


def linear_model(d=30):
    """x -> <x, w> + b: one Dense layer named "linear" (variables linear/kernel and linear/bias)."""
    inputs = keras.Input((d,))
    return keras.Model(inputs, keras.layers.Dense(1, name="linear")(inputs))


def class_images(n, num_classes=10, seed=0):
    """(x [n, 32, 32, 3] in [0, 1] float32, y [n] int32): each class a fixed random template plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 1, size=(num_classes, 32, 32, 3))
    y = rng.integers(0, num_classes, size=n).astype("int32")
    return (0.5 * templates[y] + 0.5 * rng.uniform(size=(n, 32, 32, 3))).astype("float32"), y
