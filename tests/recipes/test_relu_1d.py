"""recipes.relu_1d: the papers' data, init, loss, lr decay and stopping rule (one_layer_relu_nets/1d_nn.ipynb)
through SAMModel; kink counting; SAM learns fewer kinks."""

import dataclasses
import json

import numpy as np
import pytest

from recipes import cli
from recipes import relu_1d as r
from recipes.tasks import relu_1d as task


def _numpy_grad(weights, x, y):
    """Gradient of 0.5 * sum (f - y)^2 for f = relu(x W1 + b1) W2."""
    w1, b1, w2 = weights
    pre = x @ w1 + b1
    h = np.maximum(pre, 0)
    res = h @ w2 - y
    dh = (res @ w2.T) * (pre > 0)
    return [x.T @ dh, dh.sum(0), h.T @ res]


def _largest_bend(weights):
    """max |a_i w_i| over the units whose breakpoint lies inside the data range."""
    w1, b1, w2 = (np.asarray(w).reshape(-1) for w in weights)
    t = -b1 / w1
    inside = (t >= task.X_DATA.min()) & (t <= task.X_DATA.max())
    return np.abs(w2 * w1)[inside].max()


def test_data_and_init_are_the_papers():
    x, y = task.make_data()
    grid = np.array([-5.5, -4.5, -3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
    np.testing.assert_allclose(x[:, 0], grid / 4 + 0.07)
    np.testing.assert_allclose(y[:, 0], 0.345 + np.array([-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1]))
    w1, b1, w2 = task.make_model(100, np.random.RandomState(0)).get_weights()  # no output bias: three arrays
    assert w1.shape == (1, 100) and b1.shape == (100,) and w2.shape == (100, 1)
    assert set(np.abs(w1).ravel().tolist()) == {2.5} and 20 < (w1 > 0).sum() < 80
    assert 1.8 < b1.std() < 3.2 and 3.0 < w2.std() < 5.2
    assert not np.allclose(task.make_model(100, np.random.RandomState(1)).get_weights()[1], b1)


def _papers_steps(weights, steps, lr_max, rho, iter_max):
    """The notebook's loop (cell 3) in float64 NumPy: SAM ascends by rho * g / ||g||, sets
    lr = lr_max * (1 - n / iter_max) at its step n = 1, 2, ..., and descends with the gradient at w + eps;
    ERM (rho = 0) descends at lr_max."""
    w = [np.asarray(t, np.float64) for t in weights]
    x, y = task.make_data()
    for n in range(1, steps + 1):
        g = _numpy_grad(w, x, y)
        lr = lr_max
        if rho > 0:
            norm = np.sqrt(sum(np.sum(t * t) for t in g))
            g = _numpy_grad([a + rho * t / norm for a, t in zip(w, g)], x, y)
            lr = lr_max * (1 - n / iter_max)
        w = [a - lr * t for a, t in zip(w, g)]
    return w


@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_steps_are_the_notebooks_gd_and_normalized_n_sam_with_its_lr_decay(rho):
    """Three steps with decay_steps = 4: the SAM lr is lr * (1 - n / 4) at steps n = 1, 2, 3 (the notebook's
    lr_max * (1 - n_iterations / iter_max)); ERM keeps lr."""
    lr = 1e-4
    w0 = task.initial_weights(100, np.random.RandomState(0))
    expected = _papers_steps(w0, 3, lr, rho, iter_max=4)
    config = r.Relu1DConfig(steps=3, lr=lr, decay_steps=4, chunk=1, jit_compile=False, progress=False)
    got = r.train(config, rho, seed=0, lr_decay=rho > 0)["weights"]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-4)
    assert max(np.abs(b - np.asarray(w, np.float64)).max() for b, w in zip(expected, w0)) > 1e-2  # not vacuous
    if rho > 0:  # the decay matters: without it the third step differs
        no_decay = _papers_steps(w0, 3, lr, rho, iter_max=10**12)
        assert max(np.abs(a - b).max() for a, b in zip(expected, no_decay)) > 1e-3


def test_linear_decay_is_the_notebooks_schedule_and_never_negative():
    schedule = r.LinearDecay(5e-5, 10**6)
    for t in (0, 1, 499_999, 999_998):  # optimizer step t is the notebook's n = t + 1
        assert float(schedule(t)) == pytest.approx(5e-5 * (1 - (t + 1) / 10**6), rel=1e-5, abs=1e-15)
    assert float(schedule(999_999)) == 0.0 and float(schedule(10**6)) == 0.0  # the notebook: -5e-11 at its last step


def test_gradient_and_perturbed_loss_against_finite_differences():
    w = [np.asarray(t, np.float64) for t in task.initial_weights(100, np.random.RandomState(1))]
    grad = task.gradient(w)
    rng = np.random.default_rng(0)
    direction = [rng.normal(size=t.shape) for t in w]
    h = 1e-6
    plus = task.loss([a + h * d for a, d in zip(w, direction)])
    minus = task.loss([a - h * d for a, d in zip(w, direction)])
    assert (plus - minus) / (2 * h) == pytest.approx(sum(np.sum(g * d) for g, d in zip(grad, direction)), rel=1e-6)
    norm = np.sqrt(sum(np.sum(g * g) for g in grad))
    assert task.perturbed_loss(w, 0.3) == pytest.approx(task.loss([a + 0.3 * g / norm for a, g in zip(w, grad)]))
    assert task.perturbed_loss(w, 0.3) > task.loss(w)


def test_erm_stops_on_the_step_a_per_step_loop_stops_on():
    """The notebook tests L(w_{n-1}) before its step n and stops after it: chunks of 200 steps, located down
    to the step, end where a loop that tests every step ends (k + 1 steps, k the first step below)."""
    config = r.Relu1DConfig(steps=400, chunk=200, loss_stop=20.0, progress=False)
    trainer = r.Trainer(config, 0.0, lr_decay=False)
    chunked = r.train(config, 0.0, 0, False, trainer)
    per_step = r.train(dataclasses.replace(config, chunk=1), 0.0, 0, False, trainer)
    assert chunked["stopped"] and per_step["stopped"]
    assert chunked["steps"] == per_step["steps"] and 50 < chunked["steps"] < 100  # L(w_100) = 19.06 (NumPy)
    np.testing.assert_array_equal(chunked["weights"][0], per_step["weights"][0])
    k = chunked["steps"] - 1
    before = r.train(dataclasses.replace(config, steps=k - 1, chunk=1), 0.0, 0, False, trainer)
    at_k = r.train(dataclasses.replace(config, steps=k, chunk=1), 0.0, 0, False, trainer)
    assert not before["stopped"] and task.loss(before["weights"]) > 20.0 >= task.loss(at_k["weights"])


def test_sam_stops_on_the_perturbed_loss_not_on_the_loss_at_w():
    config = r.Relu1DConfig(steps=2000, chunk=500, loss_stop=0.0, progress=False)
    trainer = r.Trainer(config, 0.3, lr_decay=True)
    free = r.train(config, 0.3, 0, True, trainer)
    between = float(np.sqrt(free["loss"] * free["perturbed_loss"]))  # below at w, above at w + eps
    sam = r.train(dataclasses.replace(config, loss_stop=between), 0.3, 0, True, trainer)
    assert sam["loss"] < between < sam["perturbed_loss"]  # ERM's rule would have stopped here
    assert not sam["stopped"] and sam["steps"] == 2000
    np.testing.assert_array_equal(sam["weights"][1], free["weights"][1])  # and the rerun is the same run


@pytest.mark.slow
def test_sam_learns_fewer_kinks_than_erm_at_the_papers_settings(tmp_path):
    """Seed 0 at the notebook's settings: ERM stops at loss 1e-5; SAM runs all 10^6 + 1 steps (its perturbed
    loss never reaches 1e-5). Measured: ERM 66 kinks after 19591 steps; SAM 22 kinks (loss 1.05e-2)."""
    config = r.Relu1DConfig(seeds=(0,), out=str(tmp_path), progress=False)
    summary = r.compare(config)
    erm, sam = summary["runs"][0]["erm"], summary["runs"][0]["sam"]
    assert erm["stopped"] and erm["loss"] <= config.loss_stop and erm["steps"] < 100_000
    assert not sam["stopped"] and sam["steps"] == 1_000_001
    assert sam["loss"] < 0.05  # SAM fits the data too (not a collapsed net with no kinks)
    assert sam["kinks"] < 0.8 * erm["kinks"]
    assert _largest_bend(sam["weights"]) < 0.6 * _largest_bend(erm["weights"])  # and its bends are smaller
    assert (tmp_path / "relu_1d.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "relu_1d.json").read_text())
    assert saved["kinks_erm"] == [erm["kinks"]] and saved["kinks_sam"] == [sam["kinks"]]


def test_cli_json_last_line(capsys, tmp_path):
    assert cli.main(["relu_1d", "--variant", "seed0", "--steps", "2000", "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "relu_1d.json").read_text())["runs"][0]
    assert result["kinks_erm"] == [task.count_kinks(saved["erm"]["weights"])[0]]
    assert result["settings"]["lr"] == 5e-5 and result["settings"]["rho"] == 0.3  # the papers' notebook
    assert result["settings"]["seeds"] == [0] and result["steps_sam"] == [2000]
    defaults = r.Relu1DConfig()
    assert (defaults.seeds, defaults.steps, defaults.decay_steps) == ((0, 1, 2, 3, 4), 1_000_001, 1_000_000)
    assert saved["sam"]["lr_decay"] is True and saved["erm"]["lr_decay"] is False  # the papers' notebook


def test_bad_inputs_name_the_parameter(capsys):
    with pytest.raises(ValueError, match="lr_decay must be one of sam, all, none"):
        r.Relu1DConfig(lr_decay="cosine")
    with pytest.raises(ValueError, match="rho must be >= 0"):
        r.Relu1DConfig(rho=-0.1, steps=10)
    with pytest.raises(ValueError, match="steps must be a positive multiple of chunk=3"):
        r.Relu1DConfig(steps=10, chunk=3)
    with pytest.raises(ValueError, match="width must be a positive int"):
        task.make_model(0, np.random.RandomState(0))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["relu_1d", "--rho", "-1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "msam relu_1d: error: rho must be >= 0" in err and "Traceback" not in err
