"""PreAct ResNets on CIFAR-10 / CIFAR-100 with m-SAM: the deep-net experiments of the m-SAM papers.

    python -m recipes.resnet --dataset cifar10 --model resnet18 --rho 0.1 --m 16 --epochs 200 \
        --batch-size 128 --lr 0.1 --wd 5e-4 --schedule piecewise --out runs/c10_m16

This module is a configuration: it wires the library (`keras_msam.SAMModel`, `keras_msam.models`,
`keras_msam.schedules`, `keras_msam.callbacks`, `recipes.cifar`) into one `model.fit` call with
callbacks. Defaults are the papers' settings (see `shared/reference/experiments.md`, "Deep nets").

Outputs in --out: `backup/` (BackupAndRestore: a killed run restarted with the same command resumes at
the epoch after the last completed one), `tensorboard/`, `history.csv` (one row per epoch),
`final.weights.h5` (the network's weights, e.g. for `keras_msam.interpolation`) and `results.json`.
"""

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from keras_msam import SAMModel, schedules
from keras_msam.callbacks import LearningRateLogger, RhoSchedule, SAMWindow
from keras_msam.models import REGISTRY, get_model
from recipes import cifar

SCHEDULES = ("piecewise", "cosine", "cyclic", "constant", "largestep")
STRATEGIES = ("default", "mirrored", "multiworker")


@dataclasses.dataclass
class ResNetConfig:
    """Every setting of a run; the defaults are the papers' (ResNet-18, CIFAR-10, 200 epochs)."""

    # data
    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    download: bool = True
    val_fraction: float = 0.1  # 45k / 5k
    augment: bool = True
    label_noise: float = 0.0
    noise_type: str = "symmetric"
    noise_seed: int = 0
    synthetic_size: tuple = (1024, 256)
    # model
    model: str = "resnet18"
    width: Optional[int] = None  # None: the model's default (64; 8 for "tiny")
    norm: str = "batch"
    # m-SAM
    rho: float = 0.1
    m: Optional[int] = None  # per replica; None: the whole per-replica batch
    normalize: bool = True
    ascent_steps: int = 1
    step_mult: float = 1.0
    bn_in_ascent: str = "batch"
    shards_per_pass: Optional[int] = None
    sam_window: tuple = (0.0, 1.0)
    rho_follows_lr: bool = False
    # optimisation
    epochs: int = 200
    batch_size: int = 128  # global
    lr: float = 0.1
    momentum: float = 0.9
    wd: float = 5e-4
    schedule: str = "piecewise"
    decay_at: float = 0.5  # largestep only
    warmup: bool = False  # largestep only
    steps_per_epoch: Optional[int] = None  # cap; None: all full batches of the training set
    # run
    strategy: str = "default"
    jit: Optional[bool] = None  # None: on when a GPU is present
    out: str = "runs/resnet"
    seed: int = 0
    eval_batch_size: int = 500
    sharpness_m: int = 0  # > 0: evaluate the m-sharpness of the final model (256 points, rho = --rho)
    verbose: int = 2

    def check(self):
        if self.model not in REGISTRY:
            raise ValueError(f"--model {self.model!r} is unknown; valid names: {sorted(REGISTRY)}.")
        if self.dataset not in cifar.DATASETS:
            raise ValueError(f"--dataset {self.dataset!r} is unknown; valid names: {list(cifar.DATASETS)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule {self.schedule!r} is unknown; valid names: {list(SCHEDULES)}.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy {self.strategy!r} is unknown; valid names: {list(STRATEGIES)}.")
        if self.noise_type not in cifar.NOISE_TYPES:
            raise ValueError(f"--noise-type {self.noise_type!r} is unknown; valid: {list(cifar.NOISE_TYPES)}.")
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"--label-noise must be a fraction in [0, 1]; got {self.label_noise}.")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1; got {self.epochs}.")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1; got {self.batch_size}.")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"--steps-per-epoch must be >= 1 (or omitted for full epochs); got {self.steps_per_epoch}.")
        start, end = self.sam_window
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"--sam-window START END needs 0 <= START <= END <= 1 (fractions of the epochs); got {start} {end}.")
        if self.rho < 0:
            raise ValueError(f"--rho must be >= 0; got {self.rho}.")
        if self.wd < 0:
            raise ValueError(f"--wd must be >= 0; got {self.wd}.")
        return self


# --------------------------------------------------------------------------- pieces
def make_strategy(name):
    """"default" (one device), "mirrored" (all GPUs; all logical CPUs when there is no GPU) or
    "multiworker" (MultiWorkerMirroredStrategy, configured by the TF_CONFIG environment variable)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES}; got {name!r}.")


def make_schedule(config, total_steps):
    """The learning-rate schedule over `total_steps` optimizer steps."""
    if config.schedule == "piecewise":
        return schedules.Piecewise(config.lr, total_steps)
    if config.schedule == "cosine":
        return schedules.Cosine(config.lr, total_steps)
    if config.schedule == "cyclic":
        return schedules.Cyclic(config.lr, total_steps)
    if config.schedule == "constant":
        return schedules.Constant(config.lr)
    if config.schedule == "largestep":
        return schedules.LargeStep(config.lr, total_steps, decay_at=config.decay_at, warmup=config.warmup)
    raise ValueError(f"--schedule must be one of {SCHEDULES}; got {config.schedule!r}.")


def output_dir(config, strategy):
    """`--out` for the chief; multi-worker non-chief workers write into `--out/worker{task_id}`."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", 0) or 0
    is_chief = task_type in (None, "chief") or (task_type == "worker" and task_id == 0)
    return config.out if is_chief else os.path.join(config.out, f"worker{task_id}")


def per_replica_m(config, replicas):
    """(per-replica batch, m) after checking that they fit together."""
    if config.batch_size % replicas:
        raise ValueError(
            f"--batch-size {config.batch_size} (global) is not divisible by the {replicas} replicas; "
            f"use a multiple of {replicas}."
        )
    per_replica = config.batch_size // replicas
    m = per_replica if config.m is None else config.m
    if m < 1 or m > per_replica:
        raise ValueError(
            f"--m {config.m} must be in [1, {per_replica}]: m is per replica and the per-replica batch is "
            f"{config.batch_size} / {replicas} = {per_replica}; lower --m or raise --batch-size."
        )
    return per_replica, m


# SAMModel's step statistics also appear (as zeros) among Keras' validation logs: not kept.
_EVAL_ONLY_NOISE = {"val_" + name for name in ("sam_loss", "sharpness", "grad_norm", "eps_norm", "rho")}


def _read_history(path):
    """history.csv -> list of per-epoch dicts (a row repeated by a resumed run keeps its last copy)."""
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = int(row.pop("epoch"))
            values = {k: float(v) for k, v in row.items() if v not in ("", "NA", None) and k not in _EVAL_ONLY_NOISE}
            rows[epoch] = {"epoch": epoch + 1, **values}
    return [rows[e] for e in sorted(rows)]


def _errors(model, x, y, batch_size):
    """(cross-entropy per example, wrong per example) of the model's predictions on uint8 images x."""
    logits = model.predict(cifar.eval_dataset(x, y, batch_size), verbose=0)
    losses = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    return np.asarray(losses, dtype=np.float64), np.argmax(logits, axis=-1) != y


def evaluate(model, data, batch_size):
    """Test / validation / train errors, the train ones split into clean and flipped (noisy) labels."""
    results = {}
    test_loss, test_wrong = _errors(model, data.x_test, data.y_test, batch_size)
    results.update(test_error=float(test_wrong.mean()), test_loss=float(test_loss.mean()))
    if len(data.y_val):
        val_loss, val_wrong = _errors(model, data.x_val, data.y_val, batch_size)
        results.update(val_error=float(val_wrong.mean()), val_loss=float(val_loss.mean()))
    train_loss, train_wrong = _errors(model, data.x_train, data.y_train, batch_size)
    noisy = data.noisy
    results.update(
        train_error=float(train_wrong.mean()),  # w.r.t. the labels trained on
        train_loss=float(train_loss.mean()),
        train_error_clean=float(train_wrong[~noisy].mean()) if (~noisy).any() else None,
        train_error_noisy=float(train_wrong[noisy].mean()) if noisy.any() else None,  # vs the noisy labels
        noisy_fraction=float(noisy.mean()),
    )
    if noisy.any():  # how often the flipped examples are classified as their true class
        _, true_wrong = _errors(model, data.x_train[noisy], data.y_train_clean[noisy], batch_size)
        results["train_error_noisy_vs_true"] = float(true_wrong.mean())
    return results


# --------------------------------------------------------------------------- the run
def train(config, callbacks=()):
    """Trains as configured and returns the results dict (also written to `out/results.json`).

    `callbacks` are appended after the recipe's own (SAMWindow, CSVLogger, TensorBoard,
    BackupAndRestore), so they see each epoch after it has been backed up.
    """
    config.check()
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    out = output_dir(config, strategy)
    os.makedirs(out, exist_ok=True)
    replicas = strategy.num_replicas_in_sync
    per_replica, m = per_replica_m(config, replicas)
    jit = bool(tf.config.list_physical_devices("GPU")) if config.jit is None else config.jit
    print(
        f"m={m} per replica x {replicas} replica{'s' if replicas > 1 else ''}, global batch {config.batch_size} "
        f"({per_replica // m} shard{'s' if per_replica // m > 1 else ''} of m per replica), jit_compile={jit}"
    )

    data = cifar.load(
        config.dataset, config.data_dir, config.val_fraction, config.download, tuple(config.synthetic_size), config.seed
    )
    if config.label_noise > 0:
        data = data.with_label_noise(config.label_noise, config.noise_type, config.noise_seed)
    print(data.summary())
    full_steps = len(data.y_train) // config.batch_size
    if full_steps < 1:
        raise ValueError(
            f"--batch-size {config.batch_size} is larger than the {len(data.y_train)} training examples; lower it."
        )
    steps = full_steps if config.steps_per_epoch is None else min(config.steps_per_epoch, full_steps)
    total_steps = config.epochs * steps
    train_ds = cifar.train_dataset(data.x_train, data.y_train, config.batch_size, config.augment, seed=config.seed)
    val_ds = cifar.eval_dataset(data.x_val, data.y_val, config.eval_batch_size) if len(data.y_val) else None

    window = SAMWindow(*config.sam_window, epochs=config.epochs)
    with strategy.scope():
        net = get_model(config.model, data.num_classes, config.width, config.norm, weight_decay=config.wd)
        model = SAMModel(
            net,
            rho=config.rho,
            m=m,
            normalize=config.normalize,
            ascent_steps=config.ascent_steps,
            step_mult=config.step_mult,
            bn_in_ascent=config.bn_in_ascent,
            shards_per_pass=config.shards_per_pass,
            sam_enabled=window.active(0),
        )
        lr_schedule = make_schedule(config, total_steps)
        model.compile(
            optimizer=keras.optimizers.SGD(lr_schedule, momentum=config.momentum),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=jit,
        )

    recipe_callbacks = [window]
    if config.rho_follows_lr:
        recipe_callbacks.append(
            RhoSchedule(lambda epoch: config.rho * float(lr_schedule(epoch * steps)) / config.lr)
        )
    recipe_callbacks += [
        LearningRateLogger(),
        keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(out, "tensorboard"), profile_batch=0),
        keras.callbacks.BackupAndRestore(os.path.join(out, "backup")),
    ]
    model.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=steps,
        validation_data=val_ds,
        callbacks=recipe_callbacks + list(callbacks),
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=config.verbose,
    )
    net.save_weights(os.path.join(out, "final.weights.h5"))

    results = {
        "config": dataclasses.asdict(config),
        "replicas": replicas,
        "m_per_replica": m,
        "global_batch": config.batch_size,
        "steps_per_epoch": steps,
        "optimizer_steps": int(model.optimizer.iterations.numpy()),
        "num_params": int(sum(np.prod(v.shape) for v in net.trainable_variables)),
        "jit_compile": jit,
    }
    results.update(evaluate(model, data, config.eval_batch_size))
    if config.sharpness_m > 0:
        from keras_msam.sharpness import m_sharpness

        points = min(256, len(data.y_train))
        results["m_sharpness"] = m_sharpness(
            net,
            cifar.to_unit_range(data.x_train[:points]).numpy(),
            data.y_train[:points],
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            rho=config.rho,
            m=min(config.sharpness_m, points),
            n=points,
        )["sharpness"]
    results["history"] = _read_history(os.path.join(out, "history.csv"))
    results["wall_time_s"] = time.time() - started
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2, default=float)
    return results


# --------------------------------------------------------------------------- CLI
def build_parser():
    d = ResNetConfig()
    p = argparse.ArgumentParser(
        prog="msam-train resnet", description="PreAct ResNet on CIFAR with m-SAM (the papers' deep-net experiments)."
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, choices=cifar.DATASETS, help="TFDS dataset, or synthetic random data")
    g.add_argument("--data-dir", default=d.data_dir, help="TFDS data directory (default: TFDS's own)")
    g.add_argument("--no-download", dest="download", action="store_false", help="fail instead of downloading missing data")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction, help="held-out part of the train split (0.1: 45k/5k)")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop / flip")
    g.add_argument("--label-noise", type=float, default=d.label_noise, help="fraction of training labels flipped")
    g.add_argument("--noise-type", default=d.noise_type, choices=cifar.NOISE_TYPES)
    g.add_argument("--noise-seed", type=int, default=d.noise_seed)
    g.add_argument("--synthetic-size", type=int, nargs=2, default=d.synthetic_size, metavar=("TRAIN", "TEST"))
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, choices=sorted(REGISTRY))
    g.add_argument("--width", type=int, default=d.width, help="channels of the first stage (default: model's, 64)")
    g.add_argument("--norm", default=d.norm, choices=("batch", "group"))
    g = p.add_argument_group("m-SAM")
    g.add_argument("--rho", type=float, default=d.rho, help="radius of the ascent")
    g.add_argument("--m", type=int, default=d.m, help="examples per SAM shard, per replica (default: per-replica batch)")
    g.add_argument("--no-normalize", dest="normalize", action="store_false", help="unnormalized ascent eps = rho * g")
    g.add_argument("--ascent-steps", type=int, default=d.ascent_steps)
    g.add_argument("--step-mult", type=float, default=d.step_mult, help="ascent step size as a multiple of rho")
    g.add_argument("--bn-in-ascent", default=d.bn_in_ascent, choices=("batch", "frozen"))
    g.add_argument("--shards-per-pass", type=int, default=d.shards_per_pass)
    g.add_argument(
        "--sam-window", type=float, nargs=2, default=d.sam_window, metavar=("START", "END"),
        help="fractions of the epochs with SAM on (0.9 1.0: ERM->SAM; 0 0: ERM only)",
    )
    g.add_argument("--rho-follows-lr", action="store_true", help="rho scaled like the learning rate, per epoch")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--wd", type=float, default=d.wd, help="lambda of the 0.5 * lambda * ||w||^2 penalty (all weights)")
    g.add_argument("--schedule", default=d.schedule, choices=SCHEDULES)
    g.add_argument("--decay-at", type=float, default=d.decay_at, help="largestep: end of the large-step phase")
    g.add_argument("--warmup", action="store_true", help="largestep: exponential warm-up")
    g.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch, help="cap on steps per epoch")
    g = p.add_argument_group("run")
    g.add_argument("--strategy", default=d.strategy, choices=STRATEGIES)
    g.add_argument("--jit", action=argparse.BooleanOptionalAction, default=d.jit, help="XLA (default: on with a GPU)")
    g.add_argument("--out", default=d.out, help="output directory (backup, TensorBoard, history, results)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    g.add_argument("--sharpness-m", type=int, default=d.sharpness_m, help="> 0: m-sharpness of the final model")
    g.add_argument("--verbose", type=int, default=d.verbose, choices=(0, 1, 2))
    return p


def parse_config(argv=None):
    args = build_parser().parse_args(argv)
    values = vars(args)
    values["sam_window"] = tuple(values["sam_window"])
    values["synthetic_size"] = tuple(values["synthetic_size"])
    return ResNetConfig(**values).check()


def main(argv=None):
    try:
        config = parse_config(argv)
    except ValueError as error:
        build_parser().error(str(error))
    try:
        results = train(config)
    except cifar.DatasetUnavailableError as error:
        print(f"msam-train resnet: {error}", file=sys.stderr)
        return 1
    print(
        f"test error {results['test_error']:.4f}, train error {results['train_error']:.4f}"
        + (
            f" (clean labels {results['train_error_clean']:.4f}, noisy labels {results['train_error_noisy']:.4f})"
            if results.get("train_error_noisy") is not None
            else ""
        )
        + f"; results in {os.path.join(config.out, 'results.json')}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
