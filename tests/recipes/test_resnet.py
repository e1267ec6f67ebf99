"""recipes.resnet (+ the msam command): short runs of every mode on the tiny ResNet."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_msam import SAMModel
from keras_msam.sam_model import SAM_LOGS
from recipes import cli, resnet
from recipes.config import parse_command_line
from recipes.evaluation import PeriodicEvaluation

NUM_EXAMPLES = 40  # mocked CIFAR: 36 train / 4 validation / 40 test; batch 16 -> 2 steps an epoch


def _config(tmp_path, **overrides):
    values = dict(dataset="cifar10", model="tiny", epochs=2, batch_size=16, m=4, rho=0.05, lr=0.05, verbose=0)
    values.update(overrides)
    return resnet.ResNetConfig(out=str(tmp_path / "run"), **values)


def _train(config, callbacks=()):
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        return resnet.train(config, callbacks)


def parse_config(argv):
    return parse_command_line("msam resnet", resnet.EXPERIMENTS, resnet.DEFAULT_EXPERIMENT, argv)[1]


# --------------------------------------------------------------------------- config, CLI
def test_defaults_are_the_papers_settings():
    config = parse_config([])
    assert (config.dataset, config.model, config.norm) == ("cifar10", "resnet18_gn", None)  # the README's command
    assert (config.rho, config.epochs, config.batch_size, config.lr, config.wd) == (0.1, 200, 128, 0.1, 5e-4)
    assert (config.momentum, config.schedule, config.val_fraction, config.sam_window) == (0.9, "piecewise", 0.1, (0.0, 1.0))
    parsed = parse_config(
        "--m 16 --sam-window 0.9 1.0 --label-noise 0.6 --noise-type asymmetric --no-jit --strategy mirrored".split()
    )
    assert (parsed.m, parsed.sam_window, parsed.label_noise, parsed.noise_type) == (16, (0.9, 1.0), 0.6, "asymmetric")
    assert parsed.jit is False and parsed.strategy == "mirrored"
    legacy = parse_config("--no-normalize --no-augment --no-download --rho-follows-lr --synthetic-size 64 32".split())
    assert (legacy.normalize, legacy.augment, legacy.download, legacy.rho_follows_lr) == (False, False, False, True)
    assert legacy.synthetic_size == (64, 32)


def test_cli_dispatch_and_argument_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["resnet", "--help"])
    assert exit_info.value.code == 0 and "--sam-window" in capsys.readouterr().out
    assert cli.main(["bogus"]) == 2 and "unknown recipe 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["resnet", "--sam-window", "0.9", "0.5"])
    assert exit_info.value.code == 2 and "--sam-window START END" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["resnet", "--m", "64", "--batch-size", "32"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "msam resnet train: error: --m 64 must be in [1, 32]" in err


def test_missing_tfds_data_exits_with_the_fix(tmp_path, capsys):
    argv = ["--model", "tiny", "--data-dir", str(tmp_path / "tfds"), "--no-download", "--out", str(tmp_path / "o")]
    assert cli.main(["resnet", *argv]) == 1
    err = capsys.readouterr().err
    assert "'cifar10' is not prepared" in err and "download_and_prepare()" in err and "--data-dir" in err


def test_m_must_fit_the_per_replica_batch():
    config = resnet.ResNetConfig(batch_size=16, m=16)
    with pytest.raises(ValueError, match=r"--m 16 must be in \[1, 8\].*16 / 2 = 8"):
        resnet.per_replica_m(config, replicas=2)
    with pytest.raises(ValueError, match="not divisible by num_replicas=3"):
        resnet.per_replica_m(config, replicas=3)
    assert resnet.per_replica_m(resnet.ResNetConfig(batch_size=128, m=None), 2) == (64, 64)


# --------------------------------------------------------------------------- runs
@pytest.mark.slow
def test_erm_to_sam_window_with_label_noise_and_rho_following_lr(tmp_path, capsys):
    config = _config(tmp_path, label_noise=0.5, sam_window=(0.75, 1.0), rho_follows_lr=True, sharpness_m=4)
    results = _train(config)
    assert "m=4 per replica x 1 replica, global batch 16" in capsys.readouterr().out
    first, second = results["history"]
    # epoch 1: ERM steps (no ascent); epoch 2: m-SAM, with rho following the piecewise lr (/10 at 50 %)
    assert first["sam_enabled"] == 0.0 and first["eps_norm"] == 0.0 and first["sharpness"] == 0.0
    assert second["sam_enabled"] == 1.0 and second["eps_norm"] == pytest.approx(0.005, rel=1e-3)
    assert second["rho"] == pytest.approx(0.005) and first["rho"] == pytest.approx(0.05)
    assert (first["lr"], second["lr"]) == pytest.approx((0.05, 0.0005))  # lr of each epoch's last step
    assert second["sharpness"] != 0.0
    assert not any(key.startswith("val_") and key[4:] in SAM_LOGS for key in first)  # training-only diagnostics
    assert results["optimizer_steps"] == 4 and results["steps_per_epoch"] == 2
    # exactly floor(0.5 * 36) noisy labels; the train error splits into clean and noisy parts
    assert results["noisy_fraction"] == 0.5
    combined = 0.5 * results["train_error_clean"] + 0.5 * results["train_error_noisy"]
    assert results["train_error"] == pytest.approx(combined)
    assert 0.0 <= results["test_error"] <= 1.0 and np.isfinite(results["test_loss"])
    assert np.isfinite(results["m_sharpness"][4]["sharpness"])
    saved = json.load(open(os.path.join(config.out, "results.json")))
    assert saved["test_error"] == results["test_error"] and len(saved["history"]) == 2
    assert os.path.exists(os.path.join(config.out, "final.weights.h5"))
    assert any(files for _, _, files in os.walk(os.path.join(config.out, "tensorboard")))


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("simulated kill after epoch 2")


class _EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.mark.slow
def test_killed_run_resumes_at_the_next_epoch(tmp_path):
    config = _config(tmp_path, epochs=3, norm="group", val_fraction=0.0, m=16)  # one shard: cheaper to trace
    with pytest.raises(RuntimeError, match="simulated kill"):
        _train(config, [_Interrupt()])
    assert os.path.isdir(os.path.join(config.out, "backup"))
    recorder = _EpochRecorder()
    results = _train(config, [recorder])
    assert recorder.epochs == [2]  # epochs 1 and 2 were done: only the third runs
    assert results["optimizer_steps"] == 6  # the optimizer state came back with the weights
    assert [row["epoch"] for row in results["history"]] == [1, 2, 3]
    assert not os.path.exists(os.path.join(config.out, "backup"))  # removed once training completed


@pytest.mark.slow
def test_mirrored_strategy_two_replicas(tmp_path, capsys):
    config = _config(tmp_path, epochs=1, strategy="mirrored", val_fraction=0.0)
    results = _train(config)
    assert "m=4 per replica x 2 replicas, global batch 16 (2 shards of m per replica)" in capsys.readouterr().out
    assert results["replicas"] == 2 and results["m_per_replica"] == 4
    (epoch,) = results["history"]
    assert epoch["eps_norm"] == pytest.approx(0.05, rel=1e-3) and epoch["sharpness"] > 0
    assert np.isfinite(epoch["loss"]) and results["optimizer_steps"] == 2


# --------------------------------------------------------------------------- the papers' deep-net rules
def _softmax_ce_grad(params, x, y, wd):
    """mean CE + 0.5 wd ||w||^2 of a softmax layer, and its gradient (kernel, bias)."""
    kernel, bias = params
    logits = x @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    diff = (p - np.eye(kernel.shape[1])[y]) / len(y)
    return [x.T @ diff + wd * kernel, diff.sum(0) + wd * bias]


def _papers_step(params, x, y, rho, mult, steps, acc_steps, lr, wd):
    """deep_nets/train.py + sam.py with --sam_no_grad_norm: per sub-batch j of m = b / acc_steps, the
    gradient of obj_j / acc_steps, delta += rho * mult * grad, projected onto the rho-ball after each step;
    then the gradients of obj_j / acc_steps at w + delta summed, and one SGD step."""
    m = len(y) // acc_steps
    total, projected = [np.zeros_like(p) for p in params], []
    for j in range(acc_steps):
        xj, yj = x[j * m : (j + 1) * m], y[j * m : (j + 1) * m]
        delta = [np.zeros_like(p) for p in params]
        for _ in range(steps):
            grad = [g / acc_steps for g in _softmax_ce_grad([p + d for p, d in zip(params, delta)], xj, yj, wd)]
            delta = [d + rho * mult * g for d, g in zip(delta, grad)]
            norm = np.sqrt(sum(np.sum(d**2) for d in delta))
            projected.append(norm > rho)
            if norm > rho:
                delta = [d * rho / norm for d in delta]
        grad = _softmax_ce_grad([p + d for p, d in zip(params, delta)], xj, yj, wd)
        total = [t + g / acc_steps for t, g in zip(total, grad)]
    return [p - lr * t for p, t in zip(params, total)], projected


@pytest.mark.parametrize("steps", [1, 2])
def test_no_normalize_ascent_is_the_papers_projected_step_of_obj_over_acc_steps(steps):
    rng = np.random.default_rng(0)
    b, m, d, classes, wd, rho, lr = 8, 2, 5, 3, 5e-4, 0.3, 0.1
    x = rng.normal(size=(b, d))
    x[:m] *= 25.0  # a shard with a large gradient (projected) and ...
    x[m : 2 * m] *= 0.05  # ... one with a small gradient (not projected)
    y = rng.integers(0, classes, size=b)
    params = [rng.normal(size=(d, classes)) * 0.3, rng.normal(size=classes) * 0.1]
    config = resnet.ResNetConfig(normalize=False, rho=rho, ascent_steps=steps, step_mult=0.7, batch_size=b, m=m)
    settings = resnet.sam_model_settings(config, m, per_replica=b)
    assert settings["project"] is True and settings["step_mult"] == pytest.approx(0.7 * m / b)
    reg = keras.regularizers.L2(0.5 * wd)
    inputs = keras.Input((d,))
    net = keras.Model(inputs, keras.layers.Dense(classes, kernel_regularizer=reg, bias_regularizer=reg)(inputs))
    net.set_weights([p.astype("float32") for p in params])
    model = SAMModel(net, rho=rho, m=m, **settings)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x.astype("float32"), y)
    expected, projected = _papers_step(params, x, y, rho, 0.7, steps, b // m, lr, wd)
    assert any(projected) and not all(projected)  # both cases of the projection occur
    for got, want in zip(net.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
    normalized = resnet.sam_model_settings(resnet.ResNetConfig(), 16, 128)
    assert normalized["step_mult"] == 1.0 and normalized["project"] is True  # the normalized step is unscaled


@pytest.mark.parametrize("start, end, epochs, sam_epochs", [
    (0.9, 1.0, 200, list(range(180, 201))),  # ERM -> SAM: 21 SAM epochs
    (0.0, 0.5, 10, [1, 2, 3, 4, 5]),  # SAM -> ERM
    (0.0, 0.0, 5, []),  # ERM only
    (0.0, 1.0, 3, [1, 2, 3]),
    (0.7, 1.0, 10, [7, 8, 9, 10]),
])
def test_sam_window_is_the_papers_inclusive_rule(start, end, epochs, sam_epochs):
    window = resnet.PapersSAMWindow(start, end, epochs, verbose=0)
    # train.py:305: sam_epoch_frac_start <= epoch / epochs <= sam_epoch_frac_end, epoch = 1..epochs
    papers = [e for e in range(1, epochs + 1) if start <= e / epochs <= end]
    assert papers == sam_epochs
    assert [e + 1 for e in range(epochs) if window.active(e)] == papers


def test_model_names_and_norms_in_the_config():
    assert resnet.ResNetConfig(model="resnet18_gn", norm="group").norm == "group"
    with pytest.raises(ValueError, match="--model resnet18_gn --norm batch"):
        resnet.ResNetConfig(model="resnet18_gn", norm="batch")
    with pytest.raises(ValueError, match=r"--sharpness-m values must be in \[1, 256\]"):
        resnet.ResNetConfig(sharpness_m=(0, 4))
    assert resnet.ResNetConfig(sharpness_m=8).sharpness_m == (8,)  # one m


# --------------------------------------------------------------------------- Fashion-MNIST, evaluation during training
def _fashion_config(tmp_path, **overrides):
    from idx_files import write_fashion_mnist

    data_dir = tmp_path / "fashion"
    if not data_dir.exists():
        write_fashion_mnist(str(data_dir), n_train=260, n_test=80, seed=3)
    values = dict(dataset="fashion_mnist", data_dir=str(data_dir), model="tiny", train_size=128, val_size=64,
                  epochs=4, batch_size=32, m=16, rho=0.05, lr=0.05, label_noise=0.25, eval_every=2, verbose=0,
                  shards_per_pass=1)
    values.update(overrides)
    return resnet.ResNetConfig(out=str(tmp_path / "run"), **values)


@pytest.mark.slow
def test_fashion_mnist_run_evaluates_every_k_epochs_and_keeps_the_best_by_validation(tmp_path):
    config = _fashion_config(tmp_path)
    results = resnet.train(config)
    assert results["num_params"] > 0 and results["steps_per_epoch"] == 4  # 128 images of 28x28x1, batch 32
    rows = results["evaluations"]
    assert [row["epoch"] for row in rows] == [0, 2, 4]  # before training, every 2 epochs
    history = results["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    # history.csv holds the evaluations of epochs 2 and 4 (NaN in between)
    assert np.isnan(history[0]["test_error"]) and np.isnan(history[2]["val_error"])
    assert history[1]["test_error"] == rows[1]["test_error"] and history[3]["val_error"] == rows[2]["val_error"]
    assert all(row["epoch_seconds"] > 0 for row in history)
    # the noisy validation labels are what the best is chosen on: strictly lower wins, the earliest on ties
    best = rows[0]
    for row in rows[1:]:
        if row["val_error"] < best["val_error"]:
            best = row
    assert results["val_selection"]["epoch"] == best["epoch"]
    assert results["val_selection"]["test_error"] == best["test_error"]
    assert results["test_selection"]["test_error"] == min(row["test_error"] for row in rows)
    assert results["test_error"] == rows[-1]["test_error"]  # the final model = the last evaluation
    # the checkpoint holds the best model: evaluated again, it gives the same numbers
    from keras_msam.models import get_model
    from recipes.tasks import images

    data = images.load("fashion_mnist", config.data_dir, seed=config.seed, val_size=64, train_size=128)
    data = data.with_label_noise(0.25, "symmetric", config.noise_seed)
    assert data.val_noisy.sum() == 16  # the validation labels are noisy too (the papers' default)
    net = get_model("tiny", 10, input_shape=(28, 28, 1))
    net.load_weights(os.path.join(config.out, "best.weights.h5"))
    again = resnet.evaluate(net, data, 500)
    assert again["val_error"] == pytest.approx(best["val_error"]) and again["test_error"] == pytest.approx(best["test_error"])


@pytest.mark.slow
def test_evaluation_lost_with_a_kill_is_redone_on_resume(tmp_path, monkeypatch):
    config = _fashion_config(tmp_path, m=None, norm="group")  # one shard, no BatchNorm: cheap and exact
    original = PeriodicEvaluation.commit
    state = {"kill": True}

    def commit(self, epochs_done):
        if state["kill"] and self.rows and self.rows[-1]["epoch"] == 2:
            raise RuntimeError("simulated kill between backup and commit")
        original(self, epochs_done)

    monkeypatch.setattr(PeriodicEvaluation, "commit", commit)
    with pytest.raises(RuntimeError, match="between backup and commit"):
        resnet.train(config)
    lost = runner_history(config)[1]  # epoch 2's row reached history.csv (and its backup), not evaluation.json
    state["kill"] = False
    recorder = _EpochRecorder()
    results = resnet.train(config, [recorder])
    assert recorder.epochs == [2, 3]  # resumed after epoch 2
    rows = results["evaluations"]
    assert [row["epoch"] for row in rows] == [0, 2, 4]
    # epoch 2 evaluated again on the restored weights: the numbers of the killed run
    assert rows[1]["test_error"] == pytest.approx(lost["test_error"]) and rows[1]["val_loss"] == pytest.approx(lost["val_loss"])


def runner_history(config):
    from recipes import runner

    return runner.read_history(os.path.join(config.out, "history.csv"))


def test_train_size_and_eval_settings_are_checked():
    with pytest.raises(ValueError, match="--train-size must be >= 1"):
        resnet.ResNetConfig(train_size=0)
    with pytest.raises(ValueError, match="--eval-every must be >= 0"):
        resnet.ResNetConfig(eval_every=-1)
    config = parse_config("--dataset fashion_mnist --train-size 2000 --val-size 1000 --no-val-label-noise "
                          "--eval-every 10".split())
    assert (config.train_size, config.val_size, config.val_label_noise, config.eval_every) == (2000, 1000, False, 10)
    assert parse_config([]).eval_every == 5 and parse_config([]).val_label_noise is True
