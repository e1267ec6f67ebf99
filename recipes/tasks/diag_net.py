"""Sparse regression with a diagonal linear network f(x) = <x, u * v> (both papers).

The data are the papers' generator: X ~ N(0, I_d) (n rows, and n_test test rows), a teacher beta* with
r non-zero coordinates |N(0, 1)|, scaled to unit norm, and y = X beta* without noise. The network is
initialised at u0 = alpha, v0 = 0; its loss is ||X(u * v) - y||^2 / (2n), i.e. the batch mean of
`half_squared_error`.
"""

import keras
import numpy as np
from keras import ops

from keras_msam import vectorization


def make_data(n=20, d=30, r=3, n_test=1000, seed=0):
    """The papers' generator: X, X_test ~ N(0, I_d); beta* = |N(0, 1)| on r coordinates, unit norm; y = X beta*.

    Returns (X [n, d], y [n], X_test [n_test, d], y_test [n_test], beta_star [d]), float64, drawn with
    the legacy NumPy global-seed stream exactly as the papers' notebook does.
    """
    check_sizes(n, d, r, n_test)
    rng = np.random.RandomState(seed)
    X = rng.multivariate_normal(np.zeros(d), np.eye(d), n)
    X_test = rng.multivariate_normal(np.zeros(d), np.eye(d), n_test)
    beta_star = rng.randn(d)
    beta_star[r:] = 0.0
    beta_star = np.abs(beta_star) / np.linalg.norm(beta_star)
    return X, X @ beta_star, X_test, X_test @ beta_star, beta_star


def check_sizes(n, d, r, n_test):
    """ValueError naming the first size `make_data` cannot use."""
    for name, value in (("n", n), ("d", d), ("r", r), ("n_test", n_test)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {name}={value!r}.")
    if r > d:
        raise ValueError(f"r (sparsity) must be <= d; got r={r}, d={d}.")


@keras.saving.register_keras_serializable(package="keras_msam_recipes")
class DiagonalLinear(keras.layers.Layer):
    """x -> <x, u * v> with trainable u (init alpha) and v (init 0); output shape [batch, 1]."""

    def __init__(self, alpha=0.1, **kwargs):
        super().__init__(**kwargs)
        self.alpha = float(alpha)

    def build(self, input_shape):
        d = input_shape[-1]
        # not keras.initializers.Constant: it rounds alpha to float32 before casting to a float64 weight
        self.u = self.add_weight(shape=(d,), initializer=lambda shape, dtype: ops.full(shape, self.alpha, dtype=dtype),
                                 name="u")
        self.v = self.add_weight(shape=(d,), initializer="zeros", name="v")

    def call(self, x):
        return ops.sum(x * (self.u * self.v), axis=-1, keepdims=True)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


# Elementwise products and a sum: its vectorized 1-SAM steps equal the papers' update rule, computed in
# NumPy, to float64 precision (tests/recipes/test_diag_nets.py).
vectorization.register(DiagonalLinear)


def make_model(d, alpha, *, dtype=None):
    """The diagonal linear network on d inputs, initialised at u0 = alpha, v0 = 0 (a built Keras model;
    its layer "diag" holds u and v). `dtype` (e.g. "float64"): of the input and the weights (default:
    Keras' global dtype policy, float32 unless set)."""
    if not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be a positive int (input dimension); got d={d!r}.")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (init scale u0 = alpha); got alpha={alpha!r}.")
    inputs = keras.Input(shape=(int(d),), dtype=dtype)
    return keras.Model(inputs, DiagonalLinear(alpha, name="diag", dtype=dtype)(inputs), name="diag_net")


def weights(model, dtype="float64"):
    """(u, v) of a diagonal net (from `make_model`) as NumPy arrays of `dtype`."""
    u, v = (np.asarray(w, dtype) for w in model.get_layer("diag").get_weights())
    return u, v


def half_squared_error(y_true, y_pred):
    """(f - y)^2 / 2 per example (its batch mean is ||Xb - y||^2 / (2n)); SGD steps by lr * grad(r^2 / 2)."""
    return 0.5 * ops.mean(ops.square(y_pred - y_true), axis=-1)


def loss(X, y, beta):
    """||X beta - y||^2 / (2n) in float64."""
    residual = np.asarray(X) @ np.asarray(beta, dtype=np.float64) - np.asarray(y)
    return float(residual @ residual / (2 * len(residual)))
