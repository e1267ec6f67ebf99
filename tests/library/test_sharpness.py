"""keras_msam.sharpness: against NumPy versions of the papers' `eval_sharpness` (utils_eval.py, sam.py):
closed forms on a linear model, the projected normalized / unnormalized ascent, restarts with random
starts and the targeted objective, the papers' `err > final_err` selection, the m sweep; no side effects."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_msam.models import get_model
from keras_msam.sharpness import m_sharpness, m_sharpness_sweep, random_start, random_targets


def _linear_problem(n=8, d=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, use_bias=False)])
    w = rng.normal(size=(d, 1)).astype("float32")
    model.set_weights([w])
    return model, x, y, w.astype(np.float64)


def _project(delta, rho):
    norm = np.sqrt(sum(np.sum(d**2) for d in delta))
    return [d * min(1.0, rho / (norm + 1e-12)) for d in delta]


def _numpy_sharpness(w, x, y, rho, m, steps, step_mult, normalize=True):
    """The papers' weight_ascent_step by hand: step, then project onto the rho-ball, per batch of m."""
    values, norms = [], []
    for b in range(len(x) // m):
        xb, yb = x[b * m : (b + 1) * m].astype(np.float64), y[b * m : (b + 1) * m].astype(np.float64)
        loss = lambda v: np.mean((xb @ v - yb) ** 2)  # noqa: E731
        delta = np.zeros_like(w)
        for _ in range(steps):
            grad = 2.0 / m * xb.T @ (xb @ (w + delta) - yb)
            step = step_mult * rho * (grad / (np.linalg.norm(grad) + 1e-12) if normalize else grad)
            (delta,) = _project([delta + step], rho)
        values.append(loss(w + delta) - loss(w))
        norms.append(np.linalg.norm(delta))
    return np.mean(values), np.mean(norms)


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
    assert result["batches"] == 2 and result["error_sharpness"] is None  # regression: no error
    np.testing.assert_allclose(result["per_batch"], expected, rtol=1e-4)
    np.testing.assert_allclose(result["delta_norm"], rho, rtol=1e-5)


@pytest.mark.parametrize("normalize, step_mult", [(True, 0.4), (False, 0.05), (False, 0.4), (False, 30.0)])
def test_multi_step_projected_ascent_matches_numpy(normalize, step_mult):
    model, x, y, w = _linear_problem()
    rho = 0.5
    result = m_sharpness(model, x, y, keras.losses.MeanSquaredError(), rho=rho, m=2, steps=5, step_mult=step_mult,
                         n=8, normalize=normalize)
    expected, expected_norm = _numpy_sharpness(w, x, y, rho=rho, m=2, steps=5, step_mult=step_mult,
                                               normalize=normalize)
    np.testing.assert_allclose(result["sharpness"], expected, rtol=1e-4)
    assert result["delta_norm"] == pytest.approx(expected_norm, rel=1e-5)
    assert result["delta_norm"] <= rho * (1 + 1e-6)  # inside the rho-ball, up to float32 rounding
    if normalize or step_mult >= 0.4:
        # every batch's ascent leaves the ball (the NumPy reference says so) and is projected onto the sphere
        assert expected_norm == pytest.approx(rho, rel=1e-9)
    else:
        assert expected_norm < 0.6 * rho  # small unnormalized steps stay well inside the ball: no projection
    assert result["perturbed_loss"] - result["loss"] == pytest.approx(result["sharpness"], rel=1e-5)


# --------------------------------------------------------------------------- softmax classifier
def _softmax_problem(n=12, d=4, classes=3, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, classes)) * scale
    b = rng.normal(size=classes) * 0.1
    x = rng.normal(size=(n, d))
    y = np.argmax(x @ w + b + rng.normal(size=(n, classes)) * 0.5, axis=1).astype("int32")
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(classes)])
    model.set_weights([w.astype("float32"), b.astype("float32")])
    return model, x.astype("float32"), y, [w, b]


def _ce_and_grad(params, x, y, labels):
    w, b = params
    logits = x @ w + b
    logits = logits - logits.max(1, keepdims=True)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    onehot = np.eye(w.shape[1])[labels]
    loss = -np.mean(np.log(p[np.arange(len(labels)), labels]))
    diff = (p - onehot) / len(labels)
    return loss, [x.T @ diff, diff.sum(0)], np.mean(np.argmax(logits, 1) != y)


def _numpy_restart(params, x, y, rho, steps, step_mult, delta0=None, targets=None):
    """One restart of the papers' eval_sharpness: ascent of CE(y), or of -CE(y_target) from delta0."""
    delta = [np.zeros_like(p) for p in params] if delta0 is None else [np.asarray(d, np.float64) for d in delta0]
    for _ in range(steps):
        shifted = [p + d for p, d in zip(params, delta)]
        if targets is None:
            _, grad, _ = _ce_and_grad(shifted, x, y, y)
        else:
            _, grad, _ = _ce_and_grad(shifted, x, y, targets)
            grad = [-g for g in grad]
        norm = np.sqrt(sum(np.sum(g**2) for g in grad))
        delta = _project([d + step_mult * rho * g / (norm + 1e-12) for d, g in zip(delta, grad)], rho)
    loss, _, error = _ce_and_grad([p + d for p, d in zip(params, delta)], x, y, y)
    return loss, error


def test_random_starts_and_targeted_objective_match_numpy_and_take_the_worst_restart():
    model, x, y, params = _softmax_problem()
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rho, m, restarts, seed = 0.7, 4, 3, 5
    result = m_sharpness(model, x, y, ce, rho=rho, m=m, steps=6, step_mult=0.3, n=12, restarts=restarts,
                         random_init=True, seed=seed)
    weights = [tf.constant(v.numpy()) for v in model.trainable_variables]
    for b in range(3):
        xb, yb = x[b * m : (b + 1) * m].astype(np.float64), y[b * m : (b + 1) * m]
        loss0, _, error0 = _ce_and_grad(params, xb, yb, yb)
        runs = []
        for r in range(restarts):
            seeds = tf.constant([seed, b * restarts + r], tf.int64)
            delta0 = [d.numpy() for d in random_start(weights, rho, seeds)]
            targets = random_targets(tf.constant(yb), 3, seeds).numpy()
            assert np.sqrt(sum(np.sum(d**2) for d in delta0)) == pytest.approx(rho, rel=1e-5)  # on the sphere
            assert (targets != yb).all() and ((0 <= targets) & (targets < 3)).all()  # another class
            runs.append(_numpy_restart(params, xb, yb, rho, 6, 0.3, delta0, targets))
        assert len({round(run[0], 6) for run in runs}) == restarts  # genuinely different restarts
        best = max(runs)  # the worst case over restarts
        assert result["per_batch"][b] == pytest.approx(best[0] - loss0, rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="need sparse integer class labels"):
        m_sharpness(model, x, y.astype("float32"), ce, m=4, random_init=True)


def _numpy_papers_selection(params, x, y, rho, m, steps, step_mult, restarts):
    """utils_eval.eval_sharpness as written: best_obj = final_err = 0, kept only if err > final_err."""
    obj_sum = err_sum = 0.0
    for b in range(len(x) // m):
        xb, yb = x[b * m : (b + 1) * m].astype(np.float64), y[b * m : (b + 1) * m]
        obj_orig, _, err_orig = _ce_and_grad(params, xb, yb, yb)
        best_obj = final_err = 0.0
        for _ in range(restarts):
            obj, err = _numpy_restart(params, xb, yb, rho, steps, step_mult)
            if err > final_err:
                best_obj, final_err = obj, err
        obj_sum += best_obj - obj_orig
        err_sum += final_err - err_orig
    return obj_sum / (len(x) // m), err_sum / (len(x) // m)


def test_papers_selection_reproduces_their_slip_and_ours_does_not():
    # well-separated data, small rho: most batches have no error at w + delta, so the papers' rule
    # counts -L_B(w) for them
    model, x, y, params = _softmax_problem(n=16, scale=4.0, seed=1)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    settings = dict(rho=0.05, m=2, steps=4, step_mult=0.5, n=16, restarts=2)
    papers = m_sharpness(model, x, y, ce, selection="papers", **settings)
    ours = m_sharpness(model, x, y, ce, **settings)
    expected_obj, expected_err = _numpy_papers_selection(params, x, y, 0.05, 2, 4, 0.5, 2)
    assert papers["sharpness"] == pytest.approx(expected_obj, rel=1e-4)
    assert papers["error_sharpness"] == pytest.approx(expected_err, abs=1e-6)
    assert papers["sharpness"] < 0 < ours["sharpness"]  # the slip flips the sign here
    assert all(value > 0 for value in ours["per_batch"])
    zero_error_batches = [v for v, p in zip(papers["per_batch"], ours["per_batch"]) if v < 0]
    assert zero_error_batches  # batches that contributed -L_B(w)


def test_sweep_over_m_and_resnet_sharpness_nonnegative_zero_at_rho_zero_and_no_side_effects():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(24, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=24)
    model = get_model("tiny")
    before = [v.numpy().copy() for v in model.variables]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    sweep = m_sharpness_sweep(model, x, y, loss, ms=(8, 24), rho=0.1, steps=3, step_mult=0.5, n=24, bn="train")
    assert list(sweep) == [8, 24] and [r["batches"] for r in sweep.values()] == [3, 1]
    assert all(value > 0 for value in sweep[8]["per_batch"]) and sweep[24]["sharpness"] > 0
    assert 0.0 <= sweep[8]["error"] <= 1.0 and sweep[8]["error_sharpness"] >= -1.0
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
    with pytest.raises(ValueError, match="selection must be one of"):
        m_sharpness(model, x, y, mse, m=2, selection="max")
    with pytest.raises(ValueError, match="restarts must be an int >= 1"):
        m_sharpness(model, x, y, mse, m=2, restarts=0)
    with pytest.raises(ValueError, match="ms must hold at least one m"):
        m_sharpness_sweep(model, x, y, mse, ms=())
