"""recipes.resnet_analysis: the SWA model and the m-sharpness sweep of a run, the `interpolate` and
`sharpness` experiments on its checkpoints (synthetic data, the tiny ResNet, offline)."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from keras_msam.interpolation import evaluate_loss_error, recompute_bn_statistics
from keras_msam.models import get_model
from keras_msam.sharpness import m_sharpness_sweep
from recipes import cli, resnet, resnet_analysis
from recipes.tasks import images

TAU = 0.5


class _Recorder(keras.callbacks.Callback):
    """The network's trainable weights at the start and after every step."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_begin(self, logs=None):
        self.seen.append([v.numpy().copy() for v in self.model.inner.trainable_variables])

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append([v.numpy().copy() for v in self.model.inner.trainable_variables])


@pytest.fixture(scope="module")
def erm_run(tmp_path_factory):
    """An ERM run (rho 0) of 3 epochs x 4 steps with SWA every 2 epochs and an m-sharpness sweep."""
    out = tmp_path_factory.mktemp("erm")
    config = resnet.ResNetConfig(
        dataset="synthetic", synthetic_size=(80, 40), model="tiny", epochs=3, batch_size=16, rho=0.0,
        sam_window=(0.0, 0.0), lr=0.05, swa_tau=TAU, swa_every=2, sharpness_m=(4, 8), sharpness_points=16,
        out=str(out), verbose=0)
    recorder = _Recorder()
    results = resnet.train(config, [recorder])
    data = images.load("synthetic", val_fraction=config.val_fraction, synthetic_size=(80, 40), seed=config.seed)
    return config, results, recorder.seen, data


def _load(path, data):
    net = get_model("tiny", data.num_classes)
    net.load_weights(path)
    return net


@pytest.mark.slow
def test_swa_is_the_papers_moving_average_evaluated_every_k_epochs(erm_run):
    config, results, seen, data = erm_run
    assert len(seen) == 1 + 3 * 4
    expected = [w.astype(np.float64) for w in seen[0]]  # w_swa starts at the initial weights
    for weights in seen[1:]:  # utils_train.moving_average(model_swa, model, 1 - tau) after every step
        expected = [TAU * e + (1 - TAU) * w for e, w in zip(expected, weights)]
    last = _load(os.path.join(config.out, "swa_last.weights.h5"), data)
    for got, want in zip(last.trainable_variables, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    final = _load(os.path.join(config.out, "final.weights.h5"), data)
    assert not np.allclose(last.trainable_variables[0].numpy(), final.trainable_variables[0].numpy())
    # its BatchNorm statistics were recomputed for the averaged weights, not copied from the network
    assert not np.allclose(last.non_trainable_variables[0].numpy(), final.non_trainable_variables[0].numpy())
    assert results["swa_last"]["epoch"] == 3
    assert results["swa_last"]["test_error"] == pytest.approx(resnet.evaluate(last, data, 500)["test_error"])
    # evaluated after epochs 2 and 3 only; NaN in between (every row has the columns)
    history = results["history"]
    assert np.isnan(history[0]["swa_test_error"]) and np.isfinite(history[1]["swa_test_error"])
    assert history[2]["swa_test_error"] == results["swa_last"]["test_error"]
    best = results["swa_best"]
    assert best["epoch"] in (2, 3) and best["val_error"] == min(h["swa_val_error"] for h in history[1:])
    assert os.path.exists(os.path.join(config.out, "swa_best.weights.h5"))
    assert not os.path.exists(os.path.join(config.out, "swa_ema.npz"))  # complete: nothing left to resume


@pytest.mark.slow
def test_m_sharpness_of_an_erm_run_at_the_evaluation_rho_with_clean_labels(erm_run):
    config, results, _, data = erm_run
    assert set(results["m_sharpness"]) == {4, 8}
    final = _load(os.path.join(config.out, "final.weights.h5"), data)
    x = images.to_unit_range(data.x_train[:16]).numpy()
    direct = m_sharpness_sweep(final, x, data.y_train_clean[:16],
                               keras.losses.SparseCategoricalCrossentropy(from_logits=True), (4, 8), rho=0.1, n=16)
    for m in (4, 8):
        # trained with rho = 0, measured at the papers' evaluation rho 0.1: not 0
        assert results["m_sharpness"][m]["rho"] == 0.1 and results["m_sharpness"][m]["sharpness"] > 0
        assert results["m_sharpness"][m]["sharpness"] == pytest.approx(direct[m]["sharpness"], rel=1e-4)
    with open(os.path.join(config.out, "m_sharpness.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["m"]) for r in rows] == [4, 8] and float(rows[0]["sharpness"]) > 0


@pytest.mark.slow
def test_interpolate_experiment_writes_the_curve_and_reproduces_its_endpoints(erm_run, tmp_path, capsys):
    config, _, _, data = erm_run
    weights_a = os.path.join(config.out, "final.weights.h5")
    weights_b = os.path.join(config.out, "swa_last.weights.h5")
    out = str(tmp_path / "interp")
    argv = ["resnet", "interpolate", "--weights-a", weights_a, "--weights-b", weights_b, "--alphas", "-1", "2", "0.5",
            "--bn-examples", "40", "--bn-batch-size", "16", "--eval-train", "32", "--eval-test", "0", "--out", out]
    assert cli.main(argv) == 0
    assert "a = 0: test error" in capsys.readouterr().out
    results = json.load(open(os.path.join(out, "interpolation.json")))
    assert results["alpha"] == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
    assert results["train_points"] == 32 and results["test_points"] == 40
    with open(os.path.join(out, "interpolation.csv")) as handle:
        assert len(list(csv.DictReader(handle))) == 7
    with open(os.path.join(out, "interpolation.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    # a = 0 and a = 1: the checkpoints, BatchNorm recomputed on the same 40 examples in batches of 16
    settings = resnet_analysis.InterpolationConfig(bn_examples=40, bn_batch_size=16)
    batches = resnet_analysis.bn_batches(data, settings)
    assert [len(y) for _, y in batches] == [16, 16, 8]
    train = (images.to_unit_range(data.x_train[:32]).numpy(), data.y_train_clean[:32])
    test = (images.to_unit_range(data.x_test).numpy(), data.y_test)
    for alpha, path in ((0.0, weights_a), (1.0, weights_b)):
        net = _load(path, data)
        recompute_bn_statistics(net, batches, unbiased=True)
        index = results["alpha"].index(alpha)
        assert results["train_loss"][index] == pytest.approx(evaluate_loss_error(net, train)[0], rel=1e-4)
        assert results["test_error"][index] == pytest.approx(evaluate_loss_error(net, test)[1])
    assert results["distance"] > 0


def test_papers_alpha_grid_and_bad_settings(tmp_path):
    grid = resnet_analysis.alpha_grid((-1.0, 2.0, 0.05))
    # eval_loss_surface.py: concatenate(arange(-1, 0, .05), arange(0, 2.05, .05))
    papers = np.concatenate([np.arange(-1.0, 0.0, 0.05), np.arange(0.0, 2.0 + 0.05, 0.05)])
    assert len(grid) == len(papers) == 61 and np.allclose(grid, papers) and 0.0 in grid and 1.0 in grid
    with pytest.raises(ValueError, match="--alphas START STOP STEP"):
        resnet_analysis.InterpolationConfig(alphas=(1.0, 0.0, 0.1))
    with pytest.raises(ValueError, match="pass both checkpoints"):
        resnet_analysis.interpolation_run(resnet_analysis.InterpolationConfig(out=str(tmp_path)))
    missing = str(tmp_path / "nowhere.weights.h5")
    with pytest.raises(ValueError, match="no checkpoint"):
        resnet_analysis.run_config(missing)
    open(missing, "w").close()
    with pytest.raises(ValueError, match="no results.json next to"):
        resnet_analysis.run_config(missing)


@pytest.mark.slow
def test_sharpness_experiment_on_a_checkpoint(erm_run, tmp_path, capsys):
    config, results, _, _ = erm_run
    out = str(tmp_path / "sharp")
    argv = ["resnet", "sharpness", "--weights", os.path.join(config.out, "final.weights.h5"), "--sharpness-m", "8",
            "--sharpness-points", "16", "--out", out]
    assert cli.main(argv) == 0
    assert "m = 8: sharpness" in capsys.readouterr().out
    saved = json.load(open(os.path.join(out, "m_sharpness.json")))
    assert saved["m_sharpness"]["8"]["sharpness"] == pytest.approx(results["m_sharpness"][8]["sharpness"], rel=1e-5)
    assert os.path.exists(os.path.join(out, "m_sharpness.csv"))
