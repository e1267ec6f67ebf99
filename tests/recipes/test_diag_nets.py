"""recipes.diag_nets: the papers' update rules through SAMModel in float64, the papers' printed numbers, and
the papers' claims on their settings.

The papers' numbers are those printed in tml-epfl/understanding-sam, diagonal_linear_nets/
diag_nets_sam.ipynb (cell N = the N-th cell, 0-based), or, where a cell prints nothing, from rerunning its
formulas (marked "rerun"; docs/fidelity.md lists them): tests/recipes/papers_reference/diag_nets_reference.py,
a NumPy transcription of the papers' diag_nets.py and notebook cells, prints every "rerun" value.
"""

import json

import numpy as np
import pytest

from recipes import cli, config, implicit_bias
from recipes import diag_nets as dn
from recipes.tasks import diag_net

D = 30


@pytest.fixture(scope="module")
def data():
    return diag_net.make_data()


def _papers_step(method, X, y, u, v, gamma, rho, k=None):
    """One step of the papers' NumPy code (understanding-sam/diagonal_linear_nets/diag_nets.py), float64."""
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


def _compare_steps(method, data, gamma, rho, dtype, steps=4):
    """(ours, papers') (u, v) after `steps` steps of `method` from a random (u, v)."""
    X, y = data[0], data[1]
    rng = np.random.default_rng(3)
    u0, v0 = 0.1 + 0.2 * rng.normal(size=D), 0.2 * rng.normal(size=D)
    trainer = dn.Trainer(method, gamma, data, jit_compile=False, dtype=dtype)
    trainer.reset((u0, v0))
    trainer.set_rho(0.0 if method in ("gd", "sgd") else rho)
    trainer.train(steps, chunk=1, seed=7)
    order = np.random.default_rng(7).integers(len(y), size=steps)  # Trainer's SGD draws
    u, v = u0, v0
    for k in order:
        u, v = _papers_step(method, X, y, u, v, gamma, rho, k)
    assert np.abs(u - u0).max() > 1e-2  # the steps moved the weights: the comparison is not vacuous
    return trainer.weights(), (u, v)


def test_make_data_is_the_notebooks_sequence(data):
    """The notebook's cell 0, call by call from np.random.seed(0); and its teacher (rerun) 0.86573, 0.15800, 0.47491."""
    X, y, X_test, y_test, beta_star = data
    np.random.seed(0)
    papers_X = np.random.multivariate_normal(np.zeros(D), np.eye(D), 20)
    papers_X_test = np.random.multivariate_normal(np.zeros(D), np.eye(D), 1000)
    theta = np.random.randn(D)
    theta[3:] = 0
    theta = np.abs(theta) / np.linalg.norm(theta)
    np.testing.assert_array_equal(X, papers_X)
    np.testing.assert_array_equal(X_test, papers_X_test)
    np.testing.assert_array_equal(beta_star, theta)
    np.testing.assert_array_equal(y, papers_X @ theta)
    np.testing.assert_array_equal(y_test, papers_X_test @ theta)
    np.testing.assert_allclose(beta_star[:3], [0.86573, 0.15800, 0.47491], atol=1e-5)
    X2, *_ = diag_net.make_data(seed=1)
    assert not np.allclose(X, X2)


@pytest.mark.parametrize("method", ["gd", "sgd", "n-sam", "1-sam"])
def test_float64_steps_are_the_papers_float64_update_rules(data, method):
    """Four steps of each method equal the papers' NumPy float64 steps to rounding (1e-12): the weights, the
    data, the loss and the learning rate are float64 (one float32 stage would leave ~1e-7). n = 16 examples
    and rho = 0.125, gamma = 0.5 are exact in float32 too, so any float32 constant of the step stays exact."""
    data16 = (data[0][:16], data[1][:16], data[2], data[3])
    (u, v), (papers_u, papers_v) = _compare_steps(method, data16, gamma=0.5, rho=0.125, dtype="float64")
    assert u.dtype == np.float64
    np.testing.assert_allclose(u, papers_u, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(v, papers_v, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-7), ("float32", 2e-5)])
def test_one_sam_steps_on_the_papers_data(data, dtype, tolerance):
    """The papers' n = 20, rho = 0.15 and gamma = 5/d: agreement to ~2e-8 relative in float64 (gamma, rho
    and 1/20 are not exact in float32, and some float32 stage of the step remains: measured, not traced)."""
    (u, v), (papers_u, papers_v) = _compare_steps("1-sam", data, gamma=5.0 / D, rho=0.15, dtype=dtype)
    np.testing.assert_allclose(u, papers_u, rtol=tolerance, atol=tolerance / 10)
    np.testing.assert_allclose(v, papers_v, rtol=tolerance, atol=tolerance / 10)


def test_the_loop_takes_no_step_before_training(data):
    """The compiled loop is built without the "one eager step, then undo it" trick: no step is taken."""
    trainer = dn.Trainer("1-sam", 15 / D, data)
    assert int(trainer.model.optimizer.iterations.numpy()) == 0
    np.testing.assert_array_equal(trainer.weights()[0], np.full(D, 0.1))
    trainer.set_rho(0.2)
    trainer.train(20, chunk=10)
    assert int(trainer.model.optimizer.iterations.numpy()) == 20


def test_float64_training_leaves_kerass_defaults_alone(data):
    """The float64 trainer sets Keras' floatx only while it compiles: models built afterwards are float32."""
    dn.Trainer("1-sam", 15 / D, data, dtype="float64")
    assert diag_net.make_model(D, 0.1).get_layer("diag").u.dtype == "float32"
    import keras

    assert keras.config.floatx() == "float32"


@pytest.fixture(scope="module")
def trainers(data):
    """One trainer per method (compiled once, gamma set per run) for the papers' printed runs: alpha 0.1,
    10^4 + 1 steps, float64."""
    return {m: dn.Trainer(m, 15 / D, data) for m in ("erm", "n-sam", "1-sam")}


def _test_loss(trainers, method, lr_c, rho):
    trainers[method].set_lr(lr_c / D)
    return dn.train_run(trainers[method], rho, 10_001)["test_loss"]


@pytest.mark.slow
def test_rho_grid_runs_reproduce_the_notebooks_printed_test_losses(trainers):
    """Cell 4 (gamma = 15/d): GD 0.016445781003091926; 1-SAM rho = 0.1: 1.5339774886805526e-3, rho = 0.3:
    6.350068450874803e-9 (the edge of stability: only float64 gets there, and the last digits drift with
    rounding, so the bound is loose), rho = 0.9: nan. Cell 3 (gamma = 10/d): GD 0.015747762611708224,
    1-SAM rho = 0.3: 1.316634050881677e-08."""
    assert _test_loss(trainers, "erm", 15, 0.0) == pytest.approx(0.016445781003091926, rel=1e-9)
    assert _test_loss(trainers, "1-sam", 15, 0.1) == pytest.approx(1.5339774886805526e-3, rel=1e-4)
    assert _test_loss(trainers, "1-sam", 15, 0.3) < 1e-7
    assert np.isnan(_test_loss(trainers, "1-sam", 15, 0.9))
    assert _test_loss(trainers, "erm", 10, 0.0) == pytest.approx(0.015747762611708224, rel=1e-9)
    assert _test_loss(trainers, "1-sam", 10, 0.3) < 1e-7
    float32 = dn.run(dn.RunConfig(method="1-sam", rho=0.3, dtype="float32"))  # stuck: ours and the papers' code
    assert float32["test_loss"] > 1e-3 and float32["train_loss"] > 1e-4


@pytest.mark.slow
def test_the_notebooks_n_sam_column_ran_at_the_stale_step_size(trainers):
    """The printed n-SAM grid of cell 4 (0.015756677115280553 at rho = 0.001, 0.016695513663723727 at 0.1) is
    what n-SAM gives at gamma = 10/d (cell 3's leftover gamma_sgd), not at the cell's 15/d: we run 15/d."""
    assert _test_loss(trainers, "n-sam", 10, 0.001) == pytest.approx(0.015756677115280553, rel=1e-8)
    assert _test_loss(trainers, "n-sam", 10, 0.1) == pytest.approx(0.016695513663723727, rel=1e-8)
    at_15 = _test_loss(trainers, "n-sam", 15, 0.001)
    # rerun at 15/d: papers_reference/diag_nets_reference.py
    assert at_15 == pytest.approx(0.0164549, rel=1e-5)
    assert at_15 > _test_loss(trainers, "erm", 15, 0.0)  # at the right step size n-SAM never beats ERM


@pytest.mark.slow
def test_one_sam_beats_erm_by_orders_of_magnitude_and_n_sam_stays_near_erm(data):
    runs = {m: dn.run(dn.RunConfig(method=m, rho=rho), data=data) for m, rho in (("erm", 0), ("n-sam", 0.1), ("1-sam", 0.2))}
    erm, n_sam, one_sam = runs["erm"], runs["n-sam"], runs["1-sam"]
    for res in runs.values():
        assert res["train_loss"] < 1e-6 and not res["diverged"]  # all interpolate: the difference is which interpolator
    assert one_sam["test_loss"] < erm["test_loss"] / 100  # measured: 1.4e-5 vs 1.6e-2
    assert 1.0 < n_sam["test_loss"] / erm["test_loss"] < 1.25  # measured: 1.06
    beta = np.asarray(one_sam["beta"])
    np.testing.assert_allclose(beta, np.asarray(one_sam["u"]) * np.asarray(one_sam["v"]))
    assert np.abs(beta[3:]).max() < 0.01 < np.abs(beta[:3]).min()  # 1-SAM finds the support of beta*


@pytest.mark.slow
def test_effective_alpha_shrinks_as_theorem_1_says(data, tmp_path):
    """Theorem 1 (gamma = 1/d, 10^5 steps, rho = 0.1): both SAMs shrink a = alpha / 2, 1-SAM far more; each
    run sits at the interpolator of its own per-coordinate scale; n-SAM's shrinkage is the first-order one."""
    summary = dn.implicit_bias_experiment(dn.ImplicitBiasConfig(out=str(tmp_path), progress=False))
    per_coordinate = {m: summary[m]["alpha_per_coordinate_geomean"] for m in ("erm", "n-sam", "1-sam")}
    assert per_coordinate["erm"] == pytest.approx(0.05, rel=0.01)
    assert per_coordinate["erm"] > per_coordinate["n-sam"] > per_coordinate["1-sam"]
    assert per_coordinate["1-sam"] < 0.5 * per_coordinate["erm"] < per_coordinate["n-sam"]
    for method in ("erm", "n-sam", "1-sam"):
        res = summary[method]
        assert res["train_loss"] < 1e-8  # converged: the theorem's assumption
        a = np.asarray(res["alpha_per_coordinate"])
        target = implicit_bias.min_entropy_interpolator(data[0], data[1], a)
        assert np.linalg.norm(np.asarray(res["beta"]) - target) < 1e-3  # measured: 2e-5, 1e-4, 4e-4
    n_sam, one_sam = summary["n-sam"]["log_shrinkage"], summary["1-sam"]["log_shrinkage"]
    assert n_sam["measured_sum"] == pytest.approx(n_sam["first_order_sum"], rel=0.1)  # measured: -0.600 vs -0.573
    # 1-SAM: rho * ||Delta|| ~ 20 is far from first order; it shrinks more, but by the same order
    assert 1.0 < one_sam["measured_sum"] / one_sam["first_order_sum"] < 2.0  # measured: -30.8 vs -20.2
    scalar = {m: summary[m]["effective_alpha"] for m in ("erm", "n-sam", "1-sam")}
    assert scalar["erm"] == pytest.approx(0.05, rel=0.15)
    assert scalar["1-sam"] < 0.5 * min(scalar["erm"], scalar["n-sam"])


def test_first_order_deltas_predict_the_papers_sam_shrinkage_at_small_rho(data):
    """`implicit_bias.first_order_deltas` against the papers' update rules: log a_SAM,i - log a_ERM,i =
    -rho * Delta_i + O(rho^2), the error of the prediction falling like rho^2 against a signal like rho."""
    X, y = data[0], data[1]
    gamma, steps = 1.0 / D, 3000

    def scale(method, rho):
        u, v = np.full(D, 0.1), np.zeros(D)
        for _ in range(steps):
            u, v = _papers_step(method, X, y, u, v, gamma, rho)
        return implicit_bias.alpha_per_coordinate(u, v)

    deltas = implicit_bias.first_order_deltas(X, y, 0.1, gamma, steps)
    log_a_erm = np.log(scale("gd", 0.0))
    assert deltas["1-sam"].sum() > 10 * deltas["n-sam"].sum() > 0  # ~2n times more for 1-SAM
    for method in dn.SAM_METHODS:
        errors = []
        for rho in (1e-3, 1e-4):
            measured, predicted = np.log(scale(method, rho)) - log_a_erm, -rho * deltas[method]
            np.testing.assert_allclose(measured, predicted, rtol=0.02, atol=1e-3 * np.abs(predicted).max())
            errors.append(np.abs(measured - predicted).max())
        assert errors[1] < errors[0] / 5  # second order: 100x smaller at 10x smaller rho, up to rounding
    assert deltas["integral_of_loss"] > 0


@pytest.mark.slow
def test_switch_reproduces_the_notebooks_cell_5(tmp_path):
    """gamma = 1/d; ERM -> 1-SAM with rho = 10 and 1-SAM (rho = 0.175) -> ERM, unnormalized, 10^4 + 1 steps per
    phase; printed: ERM (2 x 10001 steps) 0.014602323023706629, ERM (10001) 0.014865600195083558,
    ERM -> 1-SAM 1.4269229669575567e-4, 1-SAM (10001) 1.245758657536336e-4, 1-SAM -> ERM 9.834845199886545e-5."""
    summary = dn.switch(dn.SwitchConfig(out=str(tmp_path), progress=False))
    runs = summary["runs"]
    assert runs["ERM"]["test_loss"] == pytest.approx(0.014602323023706629, rel=1e-9)
    assert runs["ERM -> 1-SAM"]["at_switch"]["test_loss"] == pytest.approx(0.014865600195083558, rel=1e-9)
    assert runs["ERM -> 1-SAM"]["test_loss"] == pytest.approx(1.4269229669575567e-4, rel=1e-4)
    assert runs["1-SAM -> ERM"]["at_switch"]["test_loss"] == pytest.approx(1.245758657536336e-4, rel=1e-4)
    assert runs["1-SAM -> ERM"]["test_loss"] == pytest.approx(9.834845199886545e-5, rel=1e-4)
    # the claims: fine-tuning ERM with 1-SAM gives most of 1-SAM's gain; ERM after 1-SAM keeps it
    assert runs["ERM -> 1-SAM"]["test_loss"] < runs["ERM"]["test_loss"] / 50
    assert runs["1-SAM -> ERM"]["test_loss"] < runs["ERM"]["test_loss"] / 50
    assert (tmp_path / "switch.png").stat().st_size > 10_000
    curve = json.loads((tmp_path / "switch.json").read_text())["runs"]["ERM -> 1-SAM"]["curve"]
    assert curve["steps"][-1] == 2 * 10_001 and curve["steps"][len(curve["steps"]) // 2 - 1] == 10_001
    header, *rows = (tmp_path / "switch.csv").read_text().splitlines()
    assert header == "run,step,train_loss,test_loss" and len(rows) == 4 * len(curve["steps"])


@pytest.mark.slow
def test_interpolation_reproduces_the_notebooks_cell_7(tmp_path):
    """a in linspace(-1, 2, 100), w(a) = (1 - a) w_ERM->1-SAM + a w_ERM; rerun of the papers' code
    (papers_reference/diag_nets_reference.py, which checks its end points against cell 5's printed ones):
    test loss 1.4269e-4 at a = 0 and 1.48656e-2 at a = 1, max train loss on [0, 1] 3.443e-4, lowest test
    loss 2.446e-5 at a = -0.1212, train loss 1.3419e-2 at a = -1 and 1.7127e-2 at a = 2."""
    summary = dn.interpolation(dn.InterpolationConfig(out=str(tmp_path), progress=False))
    a, train, test = (np.asarray(summary[k]) for k in ("a", "train_loss", "test_loss"))
    np.testing.assert_array_equal(a, np.linspace(-1, 2, 100))
    assert test[a == 0][0] == pytest.approx(1.4269e-4, rel=1e-3)
    assert test[a == 1][0] == pytest.approx(1.48656e-2, rel=1e-4)
    assert summary["max_train_loss_on_segment"] == pytest.approx(3.443e-4, rel=1e-3)
    assert summary["min_test_loss"]["a"] == pytest.approx(-0.1212, abs=1e-3)
    assert summary["min_test_loss"]["test_loss"] == pytest.approx(2.446e-5, rel=1e-3)
    assert (train[0], train[-1]) == pytest.approx((1.3419e-2, 1.7127e-2), rel=1e-3)
    initial_loss = diag_net.loss(*diag_net.make_data()[:2], np.zeros(D))
    # linearly connected on the papers' linear scale: the segment stays ~1000x below the loss at init (the
    # notebook's own comment: only approximately on a log scale, the ends being at 3.9e-6 and 4.8e-5)
    assert summary["max_train_loss_on_segment"] < 2e-3 * initial_loss
    assert summary["max_train_loss_on_segment"] < min(train[0], train[-1]) / 10  # and it rises well outside
    assert (tmp_path / "interpolation.png").stat().st_size > 10_000


def test_defaults_are_the_notebooks_and_the_variants_keep_ours():
    grid = config.make(dn.EXPERIMENTS["rho_grid"])
    assert (grid.lr_c, grid.alpha, grid.steps, grid.dtype, grid.normalize) == (15.0, 0.1, 10_001, "float64", False)
    assert set(dn.PAPERS_RHOS) <= set(grid.rhos)
    assert config.make(dn.EXPERIMENTS["rho_grid"], "papers_rhos").rhos == dn.PAPERS_RHOS
    assert config.make(dn.EXPERIMENTS["rho_grid"], "float32").dtype == "float32"
    switch = config.make(dn.EXPERIMENTS["switch"])
    assert (switch.lr_c, switch.rho_erm_sam, switch.rho_sam_erm, switch.normalize) == (1.0, 10.0, 0.175, False)
    ours = config.make(dn.EXPERIMENTS["switch"], "normalized_rho0.1")
    assert (ours.rho_erm_sam, ours.rho_sam_erm, ours.normalize) == (0.1, 0.1, True)
    inter = config.make(dn.EXPERIMENTS["interpolation"])
    assert (inter.rho, inter.points, inter.a_range, inter.normalize) == (10.0, 100, (-1.0, 2.0), False)
    assert config.make(dn.EXPERIMENTS["interpolation"], "normalized_rho0.1").rho == 0.1


def test_cli_json_is_the_last_line_and_matches_run(capsys, data):
    assert cli.main(["diag_nets", "run", "--method", "1-sam", "--rho", "0.2", "--steps", "2000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    direct = dn.run(dn.RunConfig(method="1-sam", rho=0.2, steps=2000), data=data)
    assert result["test_loss"] == pytest.approx(direct["test_loss"], rel=1e-9)
    assert result["rho_model"] == pytest.approx(0.4)  # unnormalized 1-SAM: SAMModel rho = 2 * rho
    assert result["dtype"] == "float64"
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
    with pytest.raises(ValueError, match="dtype must be one of float64, float32; got dtype='float16'"):
        dn.RunConfig(dtype="float16")
    with pytest.raises(ValueError, match="a_range must be two increasing numbers"):
        dn.InterpolationConfig(a_range=(2.0, -1.0))
    with pytest.raises(ValueError, match="alpha must be > 0"):
        diag_net.make_model(D, 0.0)
    with pytest.raises(ValueError, match=r"r \(sparsity\) must be <= d"):
        dn.RhoGridConfig(r=40)
    with pytest.raises(SystemExit) as exit_info:  # the command line: argparse's error, no traceback
        cli.main(["diag_nets", "switch", "--rho-erm-sam", "-0.1"])
    assert exit_info.value.code == 2
    assert "msam diag_nets switch: error: rho must be a float >= 0" in capsys.readouterr().err
    assert dn.sam_settings("1-sam", 0.3, normalize=True)[1] == 0.3  # normalized: the factor 2 cancels
