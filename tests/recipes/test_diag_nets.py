"""recipes.diag_nets: the papers' update rules through SAMModel, and the papers' claims on their settings."""

import json

import numpy as np
import pytest

from recipes import cli, implicit_bias
from recipes import diag_nets as dn
from recipes.tasks import diag_net

D = 30
STEPS = 10_000


@pytest.fixture(scope="module")
def data():
    return diag_net.make_data()


def _papers_step(method, X, y, u, v, gamma, rho, k=None):
    """One step of the papers' NumPy code (understanding-sam/diagonal_linear_nets/diag_nets.py)."""
    n = len(y)
    if method == "sgd":
        err = X[k] @ (u * v) - y[k]
        return u - gamma * err * X[k] * v, v - gamma * err * X[k] * u
    if method == "gd":
        e = X.T @ (X @ (u * v) - y) / n
        return u - gamma * e * v, v - gamma * e * u
    if method == "n-sam":
        e = X.T @ (X @ (u * v) - y) / n
        us, vs = u + rho * e * v, v + rho * e * u
        e2 = X.T @ (X @ (us * vs) - y) / n
        return u - gamma * e2 * vs, v - gamma * e2 * us
    r = X @ (u * v) - y  # 1-SAM: per-example ascent by rho * grad(r_k^2), descent by the mean gradient
    U = u + 2 * rho * r[:, None] * X * v
    V = v + 2 * rho * r[:, None] * X * u
    rk = np.sum(X * U * V, 1) - y
    return u - gamma * np.mean(rk[:, None] * V * X, 0), v - gamma * np.mean(rk[:, None] * U * X, 0)


def test_make_data_is_the_papers_generator(data):
    X, y, X_test, y_test, beta_star = data
    assert X.shape == (20, 30) and X_test.shape == (1000, 30)
    assert np.linalg.norm(beta_star) == pytest.approx(1.0)
    assert np.all(beta_star[:3] > 0) and np.all(beta_star[3:] == 0)
    np.testing.assert_allclose(y, X @ beta_star)
    np.testing.assert_allclose(y_test, X_test @ beta_star)
    rng = np.random.RandomState(0)  # the notebook: np.random.seed(0); X = multivariate_normal(0, I, n) first
    np.testing.assert_allclose(X, rng.multivariate_normal(np.zeros(30), np.eye(30), 20))
    X2, *_ = diag_net.make_data(seed=1)
    assert not np.allclose(X, X2)


@pytest.mark.parametrize("method", ["gd", "sgd", "n-sam", "1-sam"])
def test_steps_match_the_papers_update_rules(data, method):
    """The rho convention: SAMModel reproduces the papers' n-SAM and 1-SAM (2 * rho * r_k) and SGD exactly."""
    X, y = data[0], data[1]
    rng = np.random.default_rng(3)
    u0, v0 = 0.1 + 0.2 * rng.normal(size=D), 0.2 * rng.normal(size=D)
    gamma, rho, steps = 5.0 / D, 0.15, 4
    trainer = dn.Trainer(method, gamma, data, jit_compile=False)
    trainer.reset((u0, v0))
    trainer.set_rho(0.0 if method in ("gd", "sgd") else rho)
    trainer.train(steps, chunk=1, seed=7)
    order = np.random.default_rng(7).integers(20, size=steps)  # Trainer's SGD draws
    u, v = u0, v0
    for k in order:
        u, v = _papers_step(method, X, y, u, v, gamma, rho, k)
    got_u, got_v = trainer.weights()
    np.testing.assert_allclose(got_u, u, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got_v, v, rtol=2e-5, atol=2e-6)
    assert np.abs(u - u0).max() > 1e-2  # the steps moved the weights: the comparison is not vacuous


def test_the_loop_takes_no_step_before_training(data):
    """The compiled loop is built without the "one eager step, then undo it" trick: no step is taken."""
    trainer = dn.Trainer("1-sam", 15 / D, data)
    assert int(trainer.model.optimizer.iterations.numpy()) == 0
    np.testing.assert_array_equal(trainer.weights()[0], np.full(D, np.float32(0.1)))
    trainer.set_rho(0.2)
    trainer.train(20, chunk=10)
    assert int(trainer.model.optimizer.iterations.numpy()) == 20


@pytest.fixture(scope="module")
def grid_runs(data):
    """ERM, n-SAM and 1-SAM at the papers' gamma = 15 / d, alpha = 0.1, 10^4 steps."""
    return {
        "erm": dn.run(dn.RunConfig(method="erm", steps=STEPS), data=data),
        "n-sam": dn.run(dn.RunConfig(method="n-sam", rho=0.1, steps=STEPS), data=data),
        "1-sam": dn.run(dn.RunConfig(method="1-sam", rho=0.2, steps=STEPS), data=data),
    }


@pytest.mark.slow
def test_one_sam_beats_erm_by_orders_of_magnitude_and_n_sam_stays_near_erm(grid_runs):
    erm, n_sam, one_sam = grid_runs["erm"], grid_runs["n-sam"], grid_runs["1-sam"]
    for res in grid_runs.values():
        assert res["train_loss"] < 1e-6  # all three interpolate: the difference is which interpolator
        assert not res["diverged"]
    assert erm["test_loss"] == pytest.approx(0.01645, rel=0.02)  # the papers' NumPy code gives 0.016446
    assert one_sam["test_loss"] < erm["test_loss"] / 100  # measured: 1.4e-5 vs 1.6e-2
    assert 0.8 < n_sam["test_loss"] / erm["test_loss"] < 1.25  # measured: 1.06
    beta = np.asarray(one_sam["beta"])
    np.testing.assert_allclose(beta, np.asarray(one_sam["u"]) * np.asarray(one_sam["v"]))
    assert np.abs(beta[3:]).max() < 0.01 < np.abs(beta[:3]).min()  # 1-SAM finds the support of beta*


@pytest.mark.slow
def test_effective_alpha_ordering_erm_above_n_sam_above_one_sam(data):
    """Theorem 1 (small steps, gamma = 1 / d): both SAMs shrink the scale a = alpha / 2, 1-SAM far more."""
    settings = (("erm", 0), ("n-sam", 0.1), ("1-sam", 0.1))
    runs = {m: dn.run(dn.RunConfig(method=m, rho=rho, steps=STEPS, lr_c=1.0), data=data) for m, rho in settings}
    per_coordinate = {m: dn.effective_alphas(r, data)["alpha_per_coordinate_geomean"] for m, r in runs.items()}
    assert per_coordinate["erm"] == pytest.approx(0.05, rel=0.01)
    assert per_coordinate["erm"] > per_coordinate["n-sam"] > per_coordinate["1-sam"]
    assert per_coordinate["1-sam"] < 0.5 * per_coordinate["erm"] < per_coordinate["n-sam"]  # 1-SAM: ~n times more
    # each run sits at the interpolator of its own per-coordinate scale (the theorem's alpha * exp(-rho Delta))
    for res in runs.values():
        a = implicit_bias.alpha_per_coordinate(res["u"], res["v"])
        target = implicit_bias.min_entropy_interpolator(data[0], data[1], a)
        assert np.linalg.norm(np.asarray(res["beta"]) - target) < 0.02
    # the scalar fit: 1-SAM's interpolator is that of a much smaller alpha than ERM's
    scalar = {m: implicit_bias.effective_alpha(r["beta"], data[0], data[1])[0] for m, r in runs.items()}
    assert scalar["erm"] == pytest.approx(0.05, rel=0.15)
    assert scalar["1-sam"] < 0.5 * min(scalar["erm"], scalar["n-sam"])


@pytest.mark.slow
def test_erm_then_one_sam_recovers_most_of_the_gain_and_the_minima_are_connected(tmp_path):
    summary = dn.switch(dn.SwitchConfig(out=str(tmp_path), progress=False))
    test = {name: res["test_loss"] for name, res in summary["runs"].items()}
    gain = np.log(test["ERM"] / test["1-SAM"])
    assert gain > np.log(100)  # measured: 1.5e-2 -> 1.4e-5
    assert np.log(test["ERM"] / test["ERM -> 1-SAM"]) > 0.75 * gain
    assert test["1-SAM -> ERM"] < test["ERM"] / 100  # ERM after 1-SAM stays at the sparse solution
    assert (tmp_path / "switch.png").stat().st_size > 10_000
    curve = json.loads((tmp_path / "switch.json").read_text())["runs"]["ERM -> 1-SAM"]["curve"]
    assert curve["steps"][-1] == 2 * STEPS and len(curve["steps"]) == 200
    header, *rows = (tmp_path / "switch.csv").read_text().splitlines()
    assert header == "run,step,train_loss,test_loss" and len(rows) == 4 * 200  # no always-empty column

    inter = dn.interpolation(dn.InterpolationConfig(out=str(tmp_path), progress=False))
    a, train = np.asarray(inter["a"]), np.asarray(inter["train_loss"])
    initial_loss = diag_net.loss(*diag_net.make_data()[:2], np.zeros(D))
    assert inter["max_train_loss_on_segment"] < 1e-3 * initial_loss  # no barrier between the two minima
    assert train[np.abs(a - 1.5) < 1e-9][0] > 5 * inter["max_train_loss_on_segment"]  # the loss rises outside
    assert inter["endpoint_test_loss"]["ERM -> 1-SAM"] < inter["endpoint_test_loss"]["ERM"] / 100


def test_cli_json_is_the_last_line_and_matches_run(capsys, data):
    assert cli.main(["diag_nets", "run", "--method", "1-sam", "--rho", "0.2", "--steps", "2000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    direct = dn.run(dn.RunConfig(method="1-sam", rho=0.2, steps=2000), data=data)
    assert result["test_loss"] == pytest.approx(direct["test_loss"], rel=1e-6)
    assert result["rho_model"] == pytest.approx(0.4)  # unnormalized 1-SAM: SAMModel rho = 2 * rho
    assert len(result["beta"]) == D and len(result["curve"]["steps"]) == 100


def test_rho_grid_experiment_writes_plot_table_and_json(tmp_path, capsys):
    assert cli.main(["diag_nets", "--rhos", "0.01", "0.2", "--steps", "2000", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "rho_grid.json").read_text())
    rows = (tmp_path / "rho_grid.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("rho,erm_test")
    one_sam = {r["rho"]: r["test_loss"] for r in summary["1-sam"]}
    assert one_sam[0.2] < one_sam[0.01] < summary["erm"]["test_loss"]
    assert (tmp_path / "rho_grid.png").stat().st_size > 10_000
    assert "ERM test loss" in capsys.readouterr().out


def test_bad_inputs_name_the_parameter_and_the_fix(capsys):
    valid = "'erm', 'gd', 'sgd', 'n-sam', '1-sam'"
    with pytest.raises(ValueError, match=f"method must be one of {valid}; got method='adam'"):
        dn.RunConfig(method="adam")
    with pytest.raises(ValueError, match=r"method='erm' needs rho=0"):
        dn.RunConfig(method="erm", rho=0.1)
    with pytest.raises(ValueError, match="rho must be a float >= 0"):
        dn.sam_settings("1-sam", -0.1, normalize=False)
    with pytest.raises(ValueError, match="steps must be a positive multiple of chunk=100"):
        dn.RunConfig(method="erm", steps=150, chunk=100)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        diag_net.make_model(D, 0.0)
    with pytest.raises(ValueError, match=r"r \(sparsity\) must be <= d"):
        dn.RhoGridConfig(r=40)
    with pytest.raises(SystemExit) as exit_info:  # the command line: argparse's error, no traceback
        cli.main(["diag_nets", "switch", "--rho", "-0.1"])
    assert exit_info.value.code == 2
    assert "msam diag_nets switch: error: rho must be a float >= 0" in capsys.readouterr().err
    assert dn.sam_settings("1-sam", 0.3, normalize=True)[1] == 0.3  # normalized: the factor 2 cancels
