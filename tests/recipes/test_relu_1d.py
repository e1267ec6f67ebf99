"""recipes.relu_1d: the papers' data, init and loss through SAMModel; kink counting; SAM learns fewer kinks."""

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


@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_one_step_is_gd_or_normalized_n_sam_on_the_half_sum_loss(rho):
    x, y = task.make_data()
    w0 = [w.astype(np.float64) for w in task.make_model(100, np.random.RandomState(0)).get_weights()]
    lr = 1e-4
    g = _numpy_grad(w0, x, y)
    if rho > 0:  # normalized ascent over the whole batch (n-SAM), gradient at the perturbed point
        norm = np.sqrt(sum(np.sum(t * t) for t in g))
        g = _numpy_grad([w + rho * t / norm for w, t in zip(w0, g)], x, y)
    expected = [w - lr * t for w, t in zip(w0, g)]
    config = r.Relu1DConfig(steps=1, lr=lr, chunk=1, jit_compile=False, progress=False)
    got = r.train(config, rho, seed=0, lr_decay=False)["weights"]
    for a, b, w in zip(got, expected, w0):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-4)
    assert max(np.abs(b - w).max() for b, w in zip(expected, w0)) > 1e-2  # a sum loss moves the weights


def test_count_kinks_on_hand_made_nets():
    # units: kink at 0 (slope change 2), kink at 0.5 (0.05: negligible), two units at -0.5 (bend 1.5 + 1.5),
    # one outside the data range (at 3.0), and two units at 1.0 that add up to a real bend
    w1 = np.array([[1.0, 1.0, 1.0, -1.0, 1.0, 2.0, 2.0]])
    b1 = np.array([0.0, -0.5, 0.5, -0.5, -3.0, -2.0, -2.0])
    w2 = np.array([[2.0], [0.05], [1.5], [1.5], [4.0], [0.3], [0.3]])
    count, where = task.count_kinks([w1, b1, w2])
    np.testing.assert_allclose(where, [-0.5, 0.0, 1.0])  # the unit pair at -0.5: 1.5 * 1 + 1.5 * 1 = 3
    assert count == 3
    w2_cancel = w2.copy()
    w2_cancel[3] = -1.5  # now the pair at -0.5 cancels: relu(x + .5) - relu(-x - .5) is linear, no bend
    assert task.count_kinks([w1, b1, w2_cancel])[1] == pytest.approx([0.0, 1.0])
    assert task.count_kinks([w1, b1, w2], slope_tol=0.01)[0] == 4  # the small bend counts with a lower tolerance
    grid = np.linspace(-1, 1, 5)  # the closed form of a net: relu(x) * 2 is 0 then 2x
    np.testing.assert_allclose(task.predict([w1[:, :1], b1[:1], w2[:1]], grid)[:, 0], 2 * np.maximum(grid, 0))


@pytest.mark.slow
def test_sam_learns_fewer_kinks_than_erm(tmp_path):
    """The paper's settings except the length: 10^5 steps (SAM's lr decays to 0 over them), not 10^6.

    Measured (seeds 0, 1, 2): ERM 66 / 72 / 67 kinks at loss <= 1e-5; SAM 45 / 37 / 40 (loss ~5e-3).
    """
    config = r.Relu1DConfig(seeds=(0,), steps=100_000, out=str(tmp_path), progress=False)
    summary = r.compare(config)
    erm, sam = summary["runs"][0]["erm"], summary["runs"][0]["sam"]
    assert erm["loss"] <= config.loss_stop and erm["steps"] < 100_000  # ERM interpolates and stops early
    assert sam["loss"] < 0.05  # SAM fits the data too (not a collapsed net with no kinks)
    assert sam["kinks"] < 0.8 * erm["kinks"]
    assert _largest_bend(sam["weights"]) < 0.6 * _largest_bend(erm["weights"])  # and its bends are smaller
    assert (tmp_path / "relu_1d.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "relu_1d.json").read_text())
    assert saved["kinks_erm"] == [erm["kinks"]] and saved["kinks_sam"] == [sam["kinks"]]


def test_cli_json_last_line(capsys, tmp_path):
    assert cli.main(["relu_1d", "--steps", "2000", "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "relu_1d.json").read_text())["runs"][0]
    assert result["kinks_erm"] == [task.count_kinks(saved["erm"]["weights"])[0]]
    assert result["settings"]["lr"] == 5e-5 and result["settings"]["rho"] == 0.3  # the papers' notebook
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
