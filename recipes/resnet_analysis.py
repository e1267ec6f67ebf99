"""Analyses of the ResNet runs (`msam resnet`): m-sharpness, the papers' SWA model, linear interpolation.

- `SharpnessSettings`: the m-sharpness settings (the papers' `eval_sharpness.py` defaults), shared by the
  training run (`--sharpness-m 1 4 16 ...` measures the final network) and the `sharpness` experiment;
  `measure_sharpness` runs the sweep (`keras_msam.sharpness`) on the first training points, clean labels.
- `msam resnet interpolate --weights-a A --weights-b B`: train / test loss and error along
  (1 - a) w_A + a w_B (the papers' `eval_loss_surface.py`: 61 a from -1 to 2, BatchNorm recomputed on
  5000 augmented training examples, evaluated on 1024 train / 1024 test points) -> JSON, CSV, PNG.
- `msam resnet sharpness --weights W --sharpness-m 1 4 16 64 128`: the m-sharpness of a checkpoint.

The two experiments read the model and data settings of a checkpoint from the `results.json` that the
training run wrote next to it (`--out` of `msam resnet`).
"""

import dataclasses
import json
import math
import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from keras_msam import interpolation as interpolation_lib
from keras_msam import sharpness as sharpness_lib
from keras_msam.models import get_model
from recipes import config as config_lib
from recipes import outputs
from recipes.config import Experiment, checking_settings, setting
from recipes.tasks import images

SHARPNESS_COLUMNS = ("m", "sharpness", "error_sharpness", "loss", "error", "perturbed_loss", "perturbed_error",
                     "delta_norm", "batches")


# --------------------------------------------------------------------------- m-sharpness
@dataclasses.dataclass
class SharpnessSettings:
    """m-sharpness of a network on the first training points (clean labels), the papers'
    `eval_sharpness.py` defaults (`keras_msam.sharpness`)."""

    sharpness_m: tuple[int, ...] = setting((), "m-sharpness with each of these m (e.g. 1 4 16 64 128; none: off)")
    sharpness_rho: float = setting(0.1, "m-sharpness: radius (the papers' 0.1 for every model, ERM included)")
    sharpness_points: int = setting(256, "m-sharpness: the first N training points, clean labels")
    sharpness_steps: int = setting(20, "m-sharpness: ascent steps, each projected onto the rho-ball")
    sharpness_step_mult: float = setting(0.1, "m-sharpness: ascent step size as a multiple of rho")
    sharpness_normalize: bool = setting(True, "m-sharpness: normalized steps (--no-sharpness-normalize: "
                                              "step_mult rho g, the papers' --no_grad_norm)")
    sharpness_restarts: int = setting(1, "m-sharpness: ascents per batch (the worst one counts)")
    sharpness_random_init: bool = setting(False, "m-sharpness: random starts on the rho-sphere with the papers' "
                                                 "targeted objective")
    sharpness_selection: str = setting("loss", "m-sharpness: restart kept per batch: the largest loss, or the "
                                               "papers' err > final_err rule (slip included)",
                                       choices=sharpness_lib.SELECTIONS)

    def check_sharpness(self):
        if isinstance(self.sharpness_m, int):  # a single m
            self.sharpness_m = (self.sharpness_m,) if self.sharpness_m > 0 else ()
        self.sharpness_m = tuple(self.sharpness_m)
        if self.sharpness_points < 1:
            raise ValueError(f"--sharpness-points must be >= 1; got {self.sharpness_points}.")
        bad = [m for m in self.sharpness_m if not 1 <= m <= self.sharpness_points]
        if bad:
            raise ValueError(f"--sharpness-m values must be in [1, {self.sharpness_points}] (--sharpness-points); got {bad}.")
        if self.sharpness_rho < 0:
            raise ValueError(f"--sharpness-rho must be >= 0; got {self.sharpness_rho}.")
        if self.sharpness_steps < 1 or self.sharpness_restarts < 1:
            raise ValueError(f"--sharpness-steps and --sharpness-restarts must be >= 1; got {self.sharpness_steps}, "
                             f"{self.sharpness_restarts}.")
        if not self.sharpness_step_mult > 0:
            raise ValueError(f"--sharpness-step-mult must be > 0; got {self.sharpness_step_mult}.")
        if self.sharpness_selection not in sharpness_lib.SELECTIONS:
            raise ValueError(f"--sharpness-selection must be one of {sharpness_lib.SELECTIONS}; "
                             f"got {self.sharpness_selection!r}.")



def measure_sharpness(net, data, settings, out=None, seed=0):
    """The m-sharpness of `net` for every m of `settings.sharpness_m` on the first `sharpness_points`
    training points with their clean labels, BatchNorm in inference mode (the papers'). Returns
    {m: result of `keras_msam.sharpness.m_sharpness` without "per_batch"}; with `out`, also
    `out/m_sharpness.csv`."""
    points = min(settings.sharpness_points, len(data.y_train))
    sweep = sharpness_lib.m_sharpness_sweep(
        net,
        images.to_unit_range(data.x_train[:points]).numpy(),
        data.y_train_clean[:points],
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        settings.sharpness_m,
        rho=settings.sharpness_rho,
        steps=settings.sharpness_steps,
        step_mult=settings.sharpness_step_mult,
        normalize=settings.sharpness_normalize,
        n=points,
        restarts=settings.sharpness_restarts,
        random_init=settings.sharpness_random_init,
        selection=settings.sharpness_selection,
        seed=seed,
    )
    results = {m: {k: v for k, v in r.items() if k != "per_batch"} for m, r in sweep.items()}
    if out is not None:
        outputs.write_csv(os.path.join(out, "m_sharpness.csv"), SHARPNESS_COLUMNS,
                          [[r[k] for k in SHARPNESS_COLUMNS] for r in results.values()])
    return results


def print_analyses(results):
    """Prints the SWA and m-sharpness lines of a training run's results."""
    last, best = results.get("swa_last"), results.get("swa_best")
    if last:
        print(f"SWA (EMA of the weights): test error {last['test_error']:.4f} after the last epoch"
              + (f", {best['test_error']:.4f} best-by-validation (epoch {best['epoch']})" if best else ""))
    for m, r in (results.get("m_sharpness") or {}).items():
        print(f"m-sharpness, m = {m}, rho = {r['rho']:g}: {r['sharpness']:.4f} (error {r['error_sharpness']:+.4f})")


# --------------------------------------------------------------------------- checkpoints of a run
def run_config(weights_path):
    """The training config (a dict) of the run whose `--out` holds `weights_path` (its results.json)."""
    if not os.path.exists(weights_path):
        raise ValueError(f"no checkpoint {weights_path!r}: pass a .weights.h5 file written by `msam resnet` "
                         "(final.weights.h5, swa_best.weights.h5, ...).")
    path = os.path.join(os.path.dirname(os.path.abspath(weights_path)), "results.json")
    if not os.path.exists(path):
        raise ValueError(f"no results.json next to {weights_path!r}: the model and data settings are read from the "
                         "training run's results.json (written when `msam resnet` completes).")
    with open(path) as handle:
        return json.load(handle)["config"]


def load_run_data(run, data_dir=None, download=True):
    """The run's dataset (its split and seed), without label noise: the analyses use clean labels."""
    optional = {k: run[k] for k in ("val_size", "train_size") if run.get(k) is not None}
    return images.load(run["dataset"], data_dir if data_dir is not None else run.get("data_dir"), run["val_fraction"],
                       download, tuple(run["synthetic_size"]), run["seed"], **optional)


def load_network(run, weights_path, data):
    """The run's network with the checkpoint's weights."""
    net = get_model(run["model"], data.num_classes, run.get("width"), run.get("norm"),
                    input_shape=tuple(data.x_train.shape[1:]))
    net.load_weights(weights_path)
    return net


def _same_network(run_a, run_b):
    keys = ("dataset", "model", "width", "norm", "val_fraction", "seed", "synthetic_size")
    differ = [k for k in keys if run_a.get(k) != run_b.get(k)]
    if differ:
        raise ValueError("the two checkpoints come from runs with different " + ", ".join(
            f"{k} ({run_a.get(k)!r} vs {run_b.get(k)!r})" for k in differ) + ": interpolate between runs of one setup.")


# --------------------------------------------------------------------------- interpolation
@dataclasses.dataclass
class InterpolationConfig:
    """Linear interpolation between two checkpoints, the papers' `eval_loss_surface.py` settings."""

    weights_a: Optional[str] = setting(None, "checkpoint at a = 0 (e.g. runs/c10_erm/final.weights.h5)")
    weights_b: Optional[str] = setting(None, "checkpoint at a = 1")
    alphas: tuple[float, float, float] = setting((-1.0, 2.0, 0.05), "a from START to STOP (included) by STEP "
                                                 "(the papers' 61 points)", metavar=("START", "STOP", "STEP"))
    bn_examples: int = setting(5000, "BatchNorm recomputed at every a on the first N training examples")
    bn_batch_size: int = setting(128, "BatchNorm recomputation: batch size (batches weighted by their size)")
    bn_augment: bool = setting(True, "BatchNorm recomputation on augmented examples, as the papers")
    bn_unbiased: bool = setting(True, "BatchNorm recomputation with unbiased batch variances (PyTorch's)")
    eval_train: int = setting(1024, "train loss / error on the first N training examples (0: all), clean labels")
    eval_test: int = setting(1024, "test loss / error on the first N test examples (0: all)")
    eval_batch_size: int = setting(512, "evaluation batch size")
    data_dir: Optional[str] = setting(None, "data directory (default: the run's)")
    download: bool = setting(True, "download missing TFDS data")
    seed: int = setting(0, "seed of the BatchNorm examples' shuffle and augmentation (the same at every a)")
    out: str = setting("runs/interpolation", "output directory: interpolation.{json,csv,png}")

    def __post_init__(self):
        self.check()

    def check(self):
        if self.bn_examples < 1 or self.bn_batch_size < 1:
            raise ValueError(f"--bn-examples and --bn-batch-size must be >= 1; got {self.bn_examples}, "
                             f"{self.bn_batch_size}.")
        if self.eval_train < 0 or self.eval_test < 0:
            raise ValueError(f"--eval-train and --eval-test must be >= 0 (0: all); got {self.eval_train}, {self.eval_test}.")
        alpha_grid(self.alphas)
        return self


def alpha_grid(alphas):
    """START, STOP, STEP -> the a values START, START + STEP, ..., STOP (STOP included when on the grid)."""
    start, stop, step = (float(a) for a in alphas)
    if not step > 0 or stop < start:
        raise ValueError(f"--alphas START STOP STEP needs STEP > 0 and STOP >= START; got {start} {stop} {step}.")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    return np.round(start + step * np.arange(count), 10)


def bn_batches(data, config):
    """The BatchNorm examples: the first `bn_examples` training images, shuffled and (by default)
    augmented once with `config.seed`, in batches of `bn_batch_size` (the last one may be shorter)."""
    n = min(config.bn_examples, len(data.y_train))
    tf.random.set_seed(config.seed)
    (x, y), = images.train_dataset(data.x_train[:n], data.y_train[:n], n, config.bn_augment, seed=config.seed,
                                   repeat=False).take(1).as_numpy_iterator()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(config.bn_batch_size)  # the same batches at every a


def _first(x, y, count):
    count = len(y) if count == 0 else min(count, len(y))
    return images.to_unit_range(x[:count]).numpy(), y[:count]


def interpolation_run(config):
    """Runs the interpolation of `config` and writes OUT/interpolation.{json,csv,png}; returns the results."""
    with checking_settings():
        config.check()
        if not config.weights_a or not config.weights_b:
            raise ValueError("pass both checkpoints: --weights-a A.weights.h5 --weights-b B.weights.h5.")
        run_a, run_b = run_config(config.weights_a), run_config(config.weights_b)
        _same_network(run_a, run_b)
        data = load_run_data(run_a, config.data_dir, config.download)
    net_a = load_network(run_a, config.weights_a, data)
    weights_a = net_a.get_weights()
    weights_b = load_network(run_a, config.weights_b, data).get_weights()
    alphas = alpha_grid(config.alphas)
    train = _first(data.x_train, data.y_train_clean, config.eval_train)
    test = _first(data.x_test, data.y_test, config.eval_test)
    curves = interpolation_lib.interpolate(
        net_a, weights_a, weights_b, alphas, train, test, bn_data=bn_batches(data, config),
        batch_size=config.eval_batch_size, bn_unbiased=config.bn_unbiased)
    trainable = [i for i, v in enumerate(net_a.weights) if v.trainable]
    distance = float(np.sqrt(sum(np.sum((weights_a[i] - weights_b[i]) ** 2) for i in trainable)))
    results = {
        "config": config_lib.to_dict(config),
        "run": {k: run_a.get(k) for k in ("dataset", "model", "width", "norm", "seed")},
        "train_points": len(train[1]), "test_points": len(test[1]),
        "distance": distance,  # ||w_b - w_a|| over the trainable weights
        **curves,
    }
    os.makedirs(config.out, exist_ok=True)
    outputs.write_json(os.path.join(config.out, "interpolation.json"), results)
    outputs.write_csv(os.path.join(config.out, "interpolation.csv"), ["alpha", "train_loss", "train_error", "test_loss",
                                                                      "test_error"],
                      list(zip(*(curves[k] for k in ("alpha", "train_loss", "train_error", "test_loss", "test_error")))))
    figure = interpolation_lib.interpolation_figure(
        curves, title=f"{os.path.relpath(config.weights_a)} (a = 0) -> {os.path.relpath(config.weights_b)} (a = 1)",
        plt=outputs.pyplot())
    outputs.save_figure(figure, os.path.join(config.out, "interpolation.png"))
    return results


def _interpolation_main(config):
    results = interpolation_run(config)
    best = int(np.argmin(results["test_error"]))
    print(f"a = 0: test error {results['test_error'][list(results['alpha']).index(0.0)]:.4f}, "
          f"a = 1: {results['test_error'][list(results['alpha']).index(1.0)]:.4f}; lowest "
          f"{results['test_error'][best]:.4f} at a = {results['alpha'][best]:g}; "
          f"||w_b - w_a|| = {results['distance']:.3f}; results in {config.out}/interpolation.{{json,csv,png}}")


# --------------------------------------------------------------------------- m-sharpness of a checkpoint
@dataclasses.dataclass
class SharpnessConfig(SharpnessSettings):
    """The m-sharpness of one checkpoint (the papers' `eval_sharpness.py`)."""

    weights: Optional[str] = setting(None, "checkpoint (e.g. runs/c10_erm/final.weights.h5)")
    data_dir: Optional[str] = setting(None, "data directory (default: the run's)")
    download: bool = setting(True, "download missing TFDS data")
    seed: int = setting(0, "seed of the random starts and targets (--sharpness-random-init)")
    out: str = setting("runs/sharpness", "output directory: m_sharpness.{json,csv}")

    def __post_init__(self):
        self.check()

    def check(self):
        self.check_sharpness()
        return self


def sharpness_run(config):
    """The m-sharpness sweep of `config.weights`, written to OUT/m_sharpness.{json,csv}; returns it."""
    with checking_settings():
        config.check()
        if not config.weights:
            raise ValueError("pass the checkpoint: --weights RUN/final.weights.h5.")
        if not config.sharpness_m:
            raise ValueError("pass at least one m: --sharpness-m 1 4 16 64 128.")
        run = run_config(config.weights)
        data = load_run_data(run, config.data_dir, config.download)
    net = load_network(run, config.weights, data)
    os.makedirs(config.out, exist_ok=True)
    sweep = measure_sharpness(net, data, config, out=config.out, seed=config.seed)
    results = {"config": config_lib.to_dict(config), "run": {k: run.get(k) for k in ("dataset", "model", "rho")},
               "m_sharpness": sweep}
    outputs.write_json(os.path.join(config.out, "m_sharpness.json"), results)
    return results


def _sharpness_main(config):
    results = sharpness_run(config)
    for m, r in results["m_sharpness"].items():
        print(f"m = {m}: sharpness {r['sharpness']:.4f} (loss {r['loss']:.4f} -> {r['perturbed_loss']:.4f}), "
              f"error sharpness {r['error_sharpness']:.4f}")
    print(f"results in {config.out}/m_sharpness.{{json,csv}}")


INTERPOLATE = Experiment(_interpolation_main, InterpolationConfig,
                         help="loss / error along (1 - a) w_A + a w_B -> OUT/interpolation.{json,csv,png}")
SHARPNESS = Experiment(_sharpness_main, SharpnessConfig, defaults={"sharpness_m": (128,)},
                       help="m-sharpness of a checkpoint -> OUT/m_sharpness.{json,csv}")
