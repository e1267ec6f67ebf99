"""The 12-point 1D regression of Maennel et al. (2018), used by both papers, and its ReLU network.

x = ([-5.5, -4.5, ..., 5.5]) / 4 + 0.07, y = 0.345 + [-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1]; the
network is the two-layer ReLU net 1 -> width -> 1 (`two_layer_relu`), initialised with hidden weights
+-hidden_scale (random sign), hidden biases N(0, bias_scale^2), output weights N(0, output_scale^2)
(the understanding-SAM paper: 2.5, 2.5, 4). A kink of the learned function is a breakpoint of a hidden
unit where the slope changes (`count_kinks`).
"""

import keras
import numpy as np
from keras import ops

from recipes.tasks import two_layer_relu

X_DATA = (np.arange(-5.5, 6.0, 1.0) / 4 + 0.07).reshape(-1, 1)
Y_DATA = (0.345 + np.array([-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1], dtype=np.float64)).reshape(-1, 1)
PAPER_INIT = {"hidden_scale": 2.5, "bias_scale": 2.5, "output_scale": 4.0}
predict = two_layer_relu.predict


def make_data():
    """(x [12, 1], y [12, 1]) in float64."""
    return X_DATA.copy(), Y_DATA.copy()


def initial_weights(width, rng, hidden_scale=2.5, bias_scale=2.5, output_scale=4.0):
    """[W [1, width], b [width], a [width, 1]] drawn from `rng` (a NumPy RandomState or Generator), in
    this order: signs of W, then b, then a."""
    if not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be a positive int (hidden units); got width={width!r}.")
    return [
        hidden_scale * rng.choice([-1.0, 1.0], size=(1, width)),
        bias_scale * rng.normal(size=width),
        output_scale * rng.normal(size=(width, 1)),
    ]


def make_model(width, rng, **scales):
    """The 1 -> width -> 1 ReLU net initialised by `initial_weights(width, rng, **scales)`."""
    return two_layer_relu.make_model(1, width, initial_weights(width, rng, **scales), name="relu_1d")


class HalfSumSquaredError(keras.losses.Loss):
    """0.5 * sum_i (f(x_i) - y_i)^2 over the batch (the understanding-SAM paper's loss; not a mean)."""

    def __init__(self, name="half_sum_squared_error"):
        super().__init__(name=name, reduction="sum")

    def call(self, y_true, y_pred):
        return 0.5 * ops.sum(ops.square(y_pred - y_true), axis=-1)


def loss(weights):
    """`HalfSumSquaredError` of the net with weights [W, b, a] on the 12 points, in float64 NumPy."""
    with np.errstate(all="ignore"):
        r = predict(weights, X_DATA) - Y_DATA
        return float(0.5 * np.sum(r * r))


def gradient(weights):
    """Gradient [dW, db, da] of `loss` (0.5 * sum of squares over the 12 points) in float64 NumPy."""
    w1, b1, w2 = (np.asarray(w, np.float64) for w in weights)
    pre = X_DATA @ w1 + b1
    hidden = np.maximum(pre, 0.0)
    residual = hidden @ w2 - Y_DATA
    back = (residual @ w2.T) * (pre > 0)
    return [X_DATA.T @ back, back.sum(axis=0), hidden.T @ residual]


def perturbed_loss(weights, rho, normalize=True):
    """`loss` at w + eps, eps = rho * g / ||g|| (normalized, over all weights) or rho * g: the loss the
    papers' notebook tests for stopping a SAM run."""
    grad = gradient(weights)
    scale = rho / (np.sqrt(sum(np.sum(g * g) for g in grad)) + 1e-12) if normalize else rho
    return loss([np.asarray(w, np.float64) + scale * g for w, g in zip(weights, grad)])


def count_kinks(weights, x_range=None, slope_tol=1.0, merge_tol=1e-3):
    """Kinks of the learned function inside x_range (default: the data range); returns (count, locations).

    Unit i bends the function at t_i = -b_i / w_i by a slope change of a_i * |w_i| (a_i its output weight);
    breakpoints closer than `merge_tol` are merged (their changes add up), and a merged kink counts when
    |total slope change| > `slope_tol`.
    """
    if slope_tol < 0 or merge_tol < 0:
        raise ValueError(f"slope_tol and merge_tol must be >= 0; got slope_tol={slope_tol}, merge_tol={merge_tol}.")
    w1, b1, w2 = (np.asarray(w, np.float64) for w in weights)
    lo, hi = (X_DATA.min(), X_DATA.max()) if x_range is None else x_range
    w, b, a = w1.reshape(-1), b1.reshape(-1), w2.reshape(-1)
    active = np.abs(w) > 0
    t = -b[active] / w[active]
    change = a[active] * np.abs(w[active])
    inside = (t >= lo) & (t <= hi)
    order = np.argsort(t[inside])
    t, change = t[inside][order], change[inside][order]
    kinks, group_t, group_change = [], [], 0.0
    for ti, ci in zip(t, change):
        if group_t and ti - group_t[-1] > merge_tol:
            if abs(group_change) > slope_tol:
                kinks.append(float(np.mean(group_t)))
            group_t, group_change = [], 0.0
        group_t.append(ti)
        group_change += ci
    if group_t and abs(group_change) > slope_tol:
        kinks.append(float(np.mean(group_t)))
    return len(kinks), kinks
