"""ResNets on CIFAR-10 / CIFAR-100 with m-SAM: the deep-net experiments of the m-SAM papers.

    msam resnet --dataset cifar10 --rho 0.1 --ascent-steps 1 --lr 0.1 --schedule piecewise \
        --model resnet18_gn --width 64 --epochs 200 --batch-size 128 --wd 5e-4 --out runs/c10   # the papers' README
    msam resnet interpolate --weights-a A.weights.h5 --weights-b B.weights.h5       # recipes.resnet_analysis

A config (`ResNetConfig`, whose defaults are the papers' settings) over the library
(`keras_msam.SAMModel`, `keras_msam.models`, `keras_msam.schedules`, `keras_msam.callbacks`), the data
of `recipes.tasks.images` and `runner.fit_dataset`: one `model.fit` with the standard callbacks.

Outputs in --out: `backup/` (a killed run restarted with the same command resumes at the epoch after the
last completed one), `tensorboard/`, `history.csv` (one row per epoch; test / validation / train errors
every --eval-every epochs), `final.weights.h5` (the network's weights, e.g. for
`keras_msam.interpolation`), `best.weights.h5` (the best-by-validation ones), `evaluation.json` and
`results.json`.
"""

import dataclasses
import math
import os
import sys
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from keras_msam import SAMModel, schedules
from keras_msam.callbacks import RhoSchedule, SAMWindow
from keras_msam.models import REGISTRY, get_model, model_norm
from keras_msam.tuning import per_replica_batch
from recipes import config as config_lib
from recipes import outputs, runner
from recipes.config import Experiment, checking_settings, setting
from recipes.evaluation import PeriodicEvaluation, swa_callbacks
from recipes.resnet_analysis import INTERPOLATE, SHARPNESS, SharpnessSettings, measure_sharpness, print_analyses
from recipes.tasks import images

SCHEDULES = ("piecewise", "cosine", "cyclic", "constant", "largestep")
STRATEGIES = ("default", "mirrored", "multiworker")


@dataclasses.dataclass
class ResNetConfig(SharpnessSettings):
    """Every setting of a run; the defaults are the papers' headline run (README: resnet18_gn, CIFAR-10, 200
    epochs, batch 128 = m, rho 0.1, lr 0.1 piecewise, wd 5e-4)."""

    # data
    dataset: str = setting("cifar10", "CIFAR (TFDS), Fashion-MNIST (IDX files), or synthetic random data",
                           choices=images.DATASETS)
    data_dir: Optional[str] = setting(None, "CIFAR: TFDS data directory (default: TFDS's own); fashion_mnist: "
                                            "directory of its IDX files (default: Debian's, Keras' cache, TFDS)")
    download: bool = setting(True, "download missing TFDS data (--no-download: fail instead)")
    val_fraction: float = setting(0.1, "validation set: a random part of the train split, seeded by --seed "
                                       "(0.1: 45k / 5k)")
    val_size: Optional[int] = setting(None, "validation examples (default: --val-fraction of the train split)")
    train_size: Optional[int] = setting(None, "train on the first N non-validation examples only (default: all)")
    augment: bool = setting(True, "random crop of the zero-padded image (+ flip for CIFAR; images.AUGMENTATION)")
    label_noise: float = setting(0.0, "fraction of training (and validation) labels flipped")
    noise_type: str = setting("symmetric", "how labels are flipped", choices=images.NOISE_TYPES)
    noise_seed: int = setting(0, "seed of the label noise")
    val_label_noise: bool = setting(True, "label noise on the validation labels too, as the papers "
                                          "(--no-val-label-noise: clean validation labels)")
    synthetic_size: tuple[int, int] = setting((1024, 256), "synthetic: train + validation, test examples",
                                              metavar=("TRAIN", "TEST"))
    # model
    model: str = setting("resnet18_gn", "network, by the papers' names (keras_msam.models): resnet18(_gn) PreAct "
                                        "BatchNorm (GroupNorm), resnet34 post-activation, resnet34preact, resnet34_gn, "
                                        "resnet_tiny(_gn), resnet18_plain post-activation; tiny: ours, for tests",
                         choices=tuple(sorted(REGISTRY)))
    width: Optional[int] = setting(None, "channels of the first stage (default: the model's, 64; 8 for tiny)")
    norm: Optional[str] = setting(None, "normalisation layers (default: the model's: group for *_gn, else batch)",
                                  choices=("batch", "group"))
    # m-SAM
    rho: float = setting(0.1, "radius of the ascent (0: ERM, one pass per step)")
    m: Optional[int] = setting(None, "examples per SAM shard, per replica (default: the per-replica batch)")
    normalize: bool = setting(True, "normalized ascent rho g / ||g|| (--no-normalize: the papers' --sam_no_grad_norm, "
                                    "eps = s min(1, rho / ||s||), s = step_mult rho (m / b) g)")
    ascent_steps: int = setting(1, "ascent steps (each one projected onto the rho-ball)")
    step_mult: float = setting(1.0, "ascent step size as a multiple of rho")
    bn_in_ascent: str = setting("batch", "BatchNorm in the ascent: batch statistics or frozen (inference mode)",
                                choices=("batch", "frozen"))
    shards_per_pass: Optional[int] = setting(None, "shards vectorized together (default: all in one pass)")
    sam_window: tuple[float, float] = setting((0.0, 1.0), "SAM in the epochs e (1-based) with START <= e / epochs <= "
                                                          "END, as the papers (0.9 1.0: ERM -> SAM, the last 21 of 200; "
                                                          "0 0: ERM only)", metavar=("START", "END"))
    rho_follows_lr: bool = setting(False, "rho scaled like the learning rate, per epoch")
    # optimisation
    epochs: int = setting(200, "epochs")
    batch_size: int = setting(128, "global batch size")
    lr: float = setting(0.1, "learning rate (peak)")
    momentum: float = setting(0.9, "SGD momentum")
    wd: float = setting(5e-4, "lambda of the 0.5 lambda ||w||^2 penalty on all weights")
    schedule: str = setting("piecewise", "learning-rate schedule", choices=SCHEDULES)
    decay_at: float = setting(0.5, "largestep: p, the end of the large-step phase (a fraction of the steps)")
    warmup_exp: float = setting(1.0, "largestep: warm-up lr * w^(100 t/T) if w > 1, lr * (1 + (100 t/T)^w) "
                                     "if w < 1, linear if w = 1 (the sparse-features paper: 1.05)")
    warmup_factor: float = setting(1.0, "largestep, linear warm-up (warmup_exp 1): lr -> factor * lr at 50 %")
    steps_per_epoch: Optional[int] = setting(None, "cap on steps per epoch (default: all full batches)")
    # run
    strategy: str = setting("default", "mirrored: all GPUs (all logical CPUs without GPU); multiworker: TF_CONFIG",
                            choices=STRATEGIES)
    jit: Optional[bool] = setting(None, "XLA compilation of the step (default: on with a GPU)")
    out: str = setting("runs/resnet", "output directory (backup, TensorBoard, history, results)")
    seed: int = setting(0, "seed")
    eval_batch_size: int = setting(500, "batch size of the evaluations")
    eval_every: int = setting(5, "test / validation / train errors every K epochs and before training (into "
                                 "history.csv), best-by-validation checkpoint; 0: at the end only")
    swa: bool = setting(True, "the papers' 'SWA' (an EMA of the weights, BatchNorm recomputed) evaluated too")
    swa_tau: float = setting(0.999, "SWA: w_swa <- tau w_swa + (1 - tau) w after every step")
    swa_every: int = setting(5, "SWA: evaluated every K epochs and after the last")
    verbose: int = setting(2, "fit verbosity", choices=(0, 1, 2))

    def __post_init__(self):
        self.check()

    def check(self):
        if self.model not in REGISTRY:
            raise ValueError(f"--model {self.model!r} is unknown; valid names: {sorted(REGISTRY)}.")
        try:
            model_norm(self.model, self.norm)
        except ValueError as error:
            raise ValueError(f"--model {self.model} --norm {self.norm}: {error}") from None
        self.check_sharpness()
        if not 0.0 <= self.swa_tau < 1.0:
            raise ValueError(f"--swa-tau must be in [0, 1); got {self.swa_tau}.")
        if self.swa_every < 1:
            raise ValueError(f"--swa-every must be >= 1 (epochs); got {self.swa_every}.")
        if self.dataset not in images.DATASETS:
            raise ValueError(f"--dataset {self.dataset!r} is unknown; valid names: {list(images.DATASETS)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule {self.schedule!r} is unknown; valid names: {list(SCHEDULES)}.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy {self.strategy!r} is unknown; valid names: {list(STRATEGIES)}.")
        if self.noise_type not in images.NOISE_TYPES:
            raise ValueError(f"--noise-type {self.noise_type!r} is unknown; valid: {list(images.NOISE_TYPES)}.")
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"--label-noise must be a fraction in [0, 1]; got {self.label_noise}.")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1; got {self.epochs}.")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"--train-size must be >= 1 (or omitted for all examples); got {self.train_size}.")
        if self.val_size is not None and self.val_size < 0:
            raise ValueError(f"--val-size must be >= 0 (or omitted for --val-fraction); got {self.val_size}.")
        if self.eval_every < 0:
            raise ValueError(f"--eval-every must be >= 0 (0: evaluate at the end only); got {self.eval_every}.")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1; got {self.batch_size}.")
        if self.m is not None and not 1 <= self.m <= self.batch_size:
            raise ValueError(f"--m {self.m} must be in [1, {self.batch_size}] (--batch-size; m is per replica); "
                             "lower --m or raise --batch-size.")
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
    if config.schedule == "largestep":  # "SGD with large step sizes learns sparse features", piecewise_0Xepochs
        return schedules.LargeStep(config.lr, total_steps, decay_at=config.decay_at, warmup_exp=config.warmup_exp,
                                   warmup_factor=config.warmup_factor)
    raise ValueError(f"--schedule must be one of {SCHEDULES}; got {config.schedule!r}.")


def output_dir(config, strategy):
    """`--out` for the chief; multi-worker non-chief workers write into `--out/worker{task_id}`."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", 0) or 0
    is_chief = task_type in (None, "chief") or (task_type == "worker" and task_id == 0)
    return config.out if is_chief else os.path.join(config.out, f"worker{task_id}")


def sam_model_settings(config, m, per_replica):
    """SAMModel's ascent settings for the run, as the papers' deep-net code (deep_nets/sam.py, train.py):
    every ascent step is projected onto the rho-ball, and the unnormalized ascent (--no-normalize) steps
    along the gradient of obj / acc_steps with acc_steps = b / m shards per batch: step_mult * rho * (m / b) * g,
    i.e. eps = s min(1, rho / ||s||), s = step_mult rho (m / b) g for one step."""
    scale = 1.0 if config.normalize else m / per_replica
    return dict(normalize=config.normalize, project=True, ascent_steps=config.ascent_steps,
                step_mult=config.step_mult * scale, bn_in_ascent=config.bn_in_ascent,
                shards_per_pass=config.shards_per_pass)


class PapersSAMWindow(SAMWindow):
    """SAM in the 1-based epochs e with start <= e / epochs <= end, both ends included, as the papers'
    `sam_epoch_frac_start <= epoch / epochs <= sam_epoch_frac_end` (train.py:305): (0.9, 1.0) of 200
    epochs is epochs 180-200 (21), (0, 0.5) epochs 1-100, (0, 0) none."""

    def __init__(self, start, end, epochs, verbose=1):
        super().__init__(start, end, epochs, verbose)
        self.first_epoch = max(math.ceil(start * epochs - 1e-9), 1) - 1  # 0-based
        self.stop_epoch = math.floor(end * epochs + 1e-9)


def per_replica_m(config, replicas):
    """(per-replica batch, m) after checking that they fit together."""
    per_replica = per_replica_batch(config.batch_size, replicas)
    m = per_replica if config.m is None else config.m
    if m < 1 or m > per_replica:
        raise ValueError(
            f"--m {config.m} must be in [1, {per_replica}]: m is per replica and the per-replica batch is "
            f"{config.batch_size} / {replicas} = {per_replica}; lower --m or raise --batch-size."
        )
    return per_replica, m


def _logits(model, x, batch_size):
    """The model's logits on uint8 images x (unaugmented, inference mode)."""
    return model.predict(images.eval_dataset(x, np.zeros(len(x), np.int32), batch_size), verbose=0)


def _loss_wrong(logits, y):
    """(cross-entropy per example, wrong per example) of logits against labels y."""
    losses = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    return np.asarray(losses, dtype=np.float64), np.argmax(logits, axis=-1) != y


def evaluation_keys(data):
    """The keys `evaluate(model, data)` returns (the same for every model of a run)."""
    keys = ["test_error", "test_loss"]
    if len(data.y_val):
        keys += ["val_error", "val_loss"] + (["val_error_clean"] if data.val_noisy.any() else [])
    keys += ["train_error", "train_loss", "train_error_clean"]
    if data.noisy.any():
        keys += ["train_error_noisy", "train_error_noisy_vs_true"]
    return keys


def evaluate(model, data, batch_size):
    """Test / validation / train errors and mean cross-entropies (no weight decay), the train error split
    into clean and flipped (noisy) labels: keys `evaluation_keys(data)`.

    `val_error` is w.r.t. the validation labels as used (noisy with label noise, unless
    --no-val-label-noise), `val_error_clean` w.r.t. the original ones; `train_error_noisy` is w.r.t. the
    flipped labels (1 - it is the memorised fraction), `train_error_noisy_vs_true` w.r.t. their true labels.
    """
    results = {}
    test_loss, test_wrong = _loss_wrong(_logits(model, data.x_test, batch_size), data.y_test)
    results.update(test_error=float(test_wrong.mean()), test_loss=float(test_loss.mean()))
    if len(data.y_val):
        logits = _logits(model, data.x_val, batch_size)
        val_loss, val_wrong = _loss_wrong(logits, data.y_val)
        results.update(val_error=float(val_wrong.mean()), val_loss=float(val_loss.mean()))
        if data.val_noisy.any():
            results["val_error_clean"] = float(_loss_wrong(logits, data.y_val_clean)[1].mean())
    logits = _logits(model, data.x_train, batch_size)
    train_loss, train_wrong = _loss_wrong(logits, data.y_train)
    noisy = data.noisy
    results.update(
        train_error=float(train_wrong.mean()),  # w.r.t. the labels trained on
        train_loss=float(train_loss.mean()),
        train_error_clean=float(train_wrong[~noisy].mean()) if (~noisy).any() else None,
    )
    if noisy.any():
        results["train_error_noisy"] = float(train_wrong[noisy].mean())  # vs the noisy labels
        # how often the flipped examples are classified as their true class
        results["train_error_noisy_vs_true"] = float(_loss_wrong(logits[noisy], data.y_train_clean[noisy])[1].mean())
    return results


# --------------------------------------------------------------------------- the run
def train(config, callbacks=()):
    """Trains as configured and returns the results dict (also written to `out/results.json`).

    A bad setting found while setting up (e.g. an m that does not fit the per-replica batch) raises
    `config.SettingError`. `callbacks` are appended after the standard ones of `runner.fit_dataset`, so
    they see each epoch after it has been backed up.
    """
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    with checking_settings():
        config.check()
        strategy = make_strategy(config.strategy)
        replicas = strategy.num_replicas_in_sync
        per_replica, m = per_replica_m(config, replicas)
    out = output_dir(config, strategy)
    os.makedirs(out, exist_ok=True)
    jit = bool(tf.config.list_physical_devices("GPU")) if config.jit is None else config.jit
    print(
        f"m={m} per replica x {replicas} replica{'s' if replicas > 1 else ''}, global batch {config.batch_size} "
        f"({per_replica // m} shard{'s' if per_replica // m > 1 else ''} of m per replica), jit_compile={jit}"
    )

    with checking_settings():
        data = images.load(config.dataset, config.data_dir, config.val_fraction, config.download,
                           tuple(config.synthetic_size), config.seed, val_size=config.val_size,
                           train_size=config.train_size)
        if config.label_noise > 0:
            data = data.with_label_noise(config.label_noise, config.noise_type, config.noise_seed,
                                         validation=config.val_label_noise)
        print(data.summary())
        full_steps = len(data.y_train) // config.batch_size
        if full_steps < 1:
            raise ValueError(
                f"--batch-size {config.batch_size} is larger than the {len(data.y_train)} training examples; lower it."
            )
        steps = full_steps if config.steps_per_epoch is None else min(config.steps_per_epoch, full_steps)
        total_steps = config.epochs * steps
        train_ds = images.train_dataset(data.x_train, data.y_train, config.batch_size, config.augment,
                                        seed=config.seed, **images.AUGMENTATION[config.dataset])

        # rho = 0: plain ERM steps (one pass over the batch), not SAM steps with eps = 0
        window = PapersSAMWindow(*(config.sam_window if config.rho > 0 else (0.0, 0.0)), epochs=config.epochs)
        with strategy.scope():
            net = get_model(config.model, data.num_classes, config.width, config.norm, input_shape=data.image_shape,
                            weight_decay=config.wd)
            model = SAMModel(net, rho=config.rho, m=m, sam_enabled=window.active(0),
                             **sam_model_settings(config, m, per_replica))
            lr_schedule = make_schedule(config, total_steps)
            model.compile(
                optimizer=keras.optimizers.SGD(lr_schedule, momentum=config.momentum),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                jit_compile=jit,
            )

    evaluate_network = lambda network: evaluate(network, data, config.eval_batch_size)  # noqa: E731
    evaluation = PeriodicEvaluation(evaluate_network, evaluation_keys(data), config.eval_every, config.epochs, out, net)
    schedule_callbacks = [evaluation, window]  # the evaluation logs into history.csv: before the CSVLogger
    if config.rho_follows_lr:
        schedule_callbacks.append(RhoSchedule(lambda epoch: config.rho * float(lr_schedule(epoch * steps)) / config.lr))
    swa, after_backup = None, []
    if config.swa:  # the SWA numbers go into history.csv: its callbacks come before the CSV logger
        swa, swa_before, after_backup = swa_callbacks(net, train_ds.take(steps), evaluate_network, config.swa_tau,
                                                      config.swa_every, config.epochs, out)
        schedule_callbacks += swa_before
    history = runner.fit_dataset(model, train_ds, config.epochs, steps, out, schedule_callbacks=schedule_callbacks,
                                 callbacks=[evaluation.committer, *after_backup, *callbacks], verbose=config.verbose)
    net.save_weights(os.path.join(out, "final.weights.h5"))

    results = {
        "config": config_lib.to_dict(config),
        "replicas": replicas,
        "m_per_replica": m,
        "global_batch": config.batch_size,
        "steps_per_epoch": steps,
        "optimizer_steps": int(model.optimizer.iterations.numpy()),
        "num_params": int(sum(np.prod(v.shape) for v in net.trainable_variables)),
        "jit_compile": jit,
    }
    final = evaluation.last()
    results.update({k: v for k, v in final.items() if k != "epoch"} if final else evaluate(model, data,
                                                                                           config.eval_batch_size))
    results["noisy_fraction"] = float(data.noisy.mean())
    results.update(evaluation.selection())
    results["evaluations"] = evaluation.rows
    if swa is not None:
        results.update(swa.results())
    if config.sharpness_m:
        results["m_sharpness"] = measure_sharpness(net, data, config, out=out, seed=config.seed)
    results["history"] = history
    results["wall_time_s"] = time.time() - started
    outputs.write_json(os.path.join(out, "results.json"), results, indent=2)
    return results


def _main(config):
    results = train(config)
    noisy = results.get("train_error_noisy") is not None
    print(
        f"test error {results['test_error']:.4f}, train error {results['train_error']:.4f}"
        + (f" (clean labels {results['train_error_clean']:.4f}, noisy labels {results['train_error_noisy']:.4f})"
           if noisy else "")
        + (f"; best-by-validation (epoch {results['val_selection']['epoch']}) test error "
           f"{results['val_selection']['test_error']:.4f}" if "val_selection" in results else "")
        + f"; results in {os.path.join(config.out, 'results.json')}"
    )
    print_analyses(results)


EXPERIMENTS = {
    "train": Experiment(_main, ResNetConfig, help="one training run -> OUT/{results.json,history.csv,...}"),
    "interpolate": INTERPOLATE,
    "sharpness": SHARPNESS,
}
DEFAULT_EXPERIMENT = "train"

if __name__ == "__main__":
    from recipes import cli

    sys.exit(cli.main(["resnet", *sys.argv[1:]]))
