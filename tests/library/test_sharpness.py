"""keras_msam.sharpness.m_sharpness: hand computation on a linear model, rho = 0, no side effects."""

import keras
import numpy as np
import pytest

from keras_msam.models import get_model
from keras_msam.sharpness import m_sharpness


def _linear_problem(n=8, d=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, use_bias=False)])
    w = rng.normal(size=(d, 1)).astype("float32")
    model.set_weights([w])
    return model, x, y, w.astype(np.float64)


def _numpy_sharpness(w, x, y, rho, m, steps, step_mult):
    """The definition, by hand: normalized ascent steps projected to the rho-ball, per batch of m."""
    values = []
    for b in range(len(x) // m):
        xb, yb = x[b * m : (b + 1) * m].astype(np.float64), y[b * m : (b + 1) * m].astype(np.float64)
        loss = lambda v: np.mean((xb @ v - yb) ** 2)  # noqa: E731
        delta = np.zeros_like(w)
        for _ in range(steps):
            grad = 2.0 / m * xb.T @ (xb @ (w + delta) - yb)
            delta = delta + step_mult * rho * grad / np.linalg.norm(grad)
            delta = delta * min(1.0, rho / np.linalg.norm(delta))
        values.append(loss(w + delta) - loss(w))
    return np.mean(values)


def test_one_step_matches_closed_form_on_linear_model():
    model, x, y, w = _linear_problem()
    rho, m = 0.3, 4
    result = m_sharpness(model, x, y, keras.losses.MeanSquaredError(), rho=rho, m=m, steps=1, step_mult=1.0, n=8)
    # L(w + d) - L(w) = g.d + ||X d||^2 / m with d = rho g / ||g||
    expected = []
    for b in range(2):
        xb, yb = x[b * m : (b + 1) * m].astype(np.float64), y[b * m : (b + 1) * m].astype(np.float64)
        g = 2.0 / m * xb.T @ (xb @ w - yb)
        unit = g / np.linalg.norm(g)
        expected.append(rho * np.linalg.norm(g) + rho**2 * np.sum((xb @ unit) ** 2) / m)
    assert result["batches"] == 2
    np.testing.assert_allclose(result["per_batch"], expected, rtol=1e-4)
    np.testing.assert_allclose(result["delta_norm"], rho, rtol=1e-5)


def test_multi_step_projected_ascent_matches_numpy():
    model, x, y, w = _linear_problem()
    result = m_sharpness(model, x, y, keras.losses.MeanSquaredError(), rho=0.5, m=2, steps=5, step_mult=0.4, n=8)
    expected = _numpy_sharpness(w, x, y, rho=0.5, m=2, steps=5, step_mult=0.4)
    np.testing.assert_allclose(result["sharpness"], expected, rtol=1e-4)
    assert result["delta_norm"] == pytest.approx(0.5, rel=1e-5)  # 5 steps of 0.2 rho: ends on the sphere
    assert result["perturbed_loss"] - result["loss"] == pytest.approx(result["sharpness"], rel=1e-5)


def test_resnet_sharpness_nonnegative_zero_at_rho_zero_and_no_side_effects():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(24, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=24)
    model = get_model("tiny")
    before = [v.numpy().copy() for v in model.variables]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    sharp = m_sharpness(model, x, y, loss, rho=0.1, m=8, steps=3, step_mult=0.5, n=24, bn="train")
    assert sharp["batches"] == 3 and all(value > 0 for value in sharp["per_batch"])
    assert sharp["sharpness"] > 0
    flat = m_sharpness(model, x, y, loss, rho=0.0, m=8, steps=2, n=16, bn="eval")
    assert flat["sharpness"] == 0.0 and flat["delta_norm"] == 0.0
    for old, variable in zip(before, model.variables):  # weights and BatchNorm statistics untouched
        np.testing.assert_array_equal(old, variable.numpy())


def test_argument_errors_name_the_parameter():
    model, x, y, _ = _linear_problem()
    mse = keras.losses.MeanSquaredError()
    with pytest.raises(ValueError, match="m=16 is larger than the 8 points"):
        m_sharpness(model, x, y, mse, rho=0.1, m=16, n=None)
    with pytest.raises(ValueError, match="bn must be one of"):
        m_sharpness(model, x, y, mse, rho=0.1, m=2, bn="frozen")
    with pytest.raises(ValueError, match="rho must be a float >= 0"):
        m_sharpness(model, x, y, mse, rho=-1.0, m=2)
