"""`msam tune TASK`: search SAM's rho and m (and the learning rate) with KerasTuner on one of the tasks.

    msam tune diag_nets --tuner random --max-trials 20 --directory tune_runs
    msam tune teacher_student --tuner hyperband --max-epochs 9 --tensorboard

Writes the tuner's directory DIR/PROJECT (PROJECT defaults to the task name), and there summary.csv and
summary.md: one row per trial, best first (trial_id, method, rho, m, lr, objective); the table is also
printed. With --tensorboard, DIR/PROJECT/tensorboard holds one run per trial (SAM scalars every
--log-every steps, Keras' epoch metrics in its train/ and validation/ runs, HParams session):
`tensorboard --logdir DIR/PROJECT/tensorboard`.

Tasks (the experiments; all offline unless noted):
- diag_nets: the papers' diagonal linear network (`recipes.tasks.diag_net`: n=20, d=30, r=3,
  alpha=0.1), loss ||X(u*v) - y||^2 / (2n), full-batch steps, unnormalized ascent as in the papers'
  code; objective on the 1000 test points (the papers' "test loss"). rho is SAMModel's: for m=1 it is
  twice the papers' 1-SAM rho (see recipes/diag_nets.py).
- teacher_student: a two-layer ReLU student (20 units, Keras' init) fitting the "signed" teacher of
  `recipes.tasks.teacher_student` (3 neurons with +-1 output weights) from n=15 points in d=2.
- cifar10 / cifar100 / cifar_synthetic: PreAct ResNet-18 (`--model`) on CIFAR through TFDS (downloads
  unless already prepared); cifar_synthetic is random CIFAR-shaped data with the tiny model, offline.
"""

import argparse
import dataclasses
import functools
import os
import sys
from typing import Optional

import numpy as np

from recipes import outputs
from recipes.config import Experiment, checking_settings, setting
from recipes.tasks import diag_net, teacher_student, two_layer_relu

SUMMARY_COLUMNS = ("trial_id", "method", "rho", "m", "lr", "objective")


def _range(text):
    """LOW,HIGH (searched log-uniformly) or VALUE (fixed), positive numbers."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH or VALUE (positive numbers); got {text!r}")
    return tuple(values) if len(values) == 2 else values[0]


def _m_choices(text):
    """ "divisors" or a comma-separated list of ints."""
    if text == "divisors":
        return text
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected "divisors" or a comma-separated list of ints; got {text!r}')


@dataclasses.dataclass
class TuneConfig:
    tuner: str = setting("random", "search algorithm", choices=("random", "bayesian", "hyperband"))
    max_trials: int = setting(10, "trials (random, bayesian)")
    max_epochs: Optional[int] = setting(None, "hyperband's longest run (default: --epochs)")
    objective: str = setting("val_loss", "metric of the fit logs to optimize")
    direction: Optional[str] = setting(None, "min or max (default: KerasTuner's guess)", choices=("min", "max"))
    directory: str = setting("tune_runs", "where the tuner writes (DIR/PROJECT)")
    project_name: Optional[str] = setting(None, "PROJECT (default: the task name)")
    epochs: int = setting(10, "epochs per trial")
    steps_per_epoch: int = setting(100, "steps per epoch")
    batch_size: Optional[int] = setting(None, "global batch (default: the task's: all n examples for diag_nets "
                                              "and teacher_student, 128 for the images)")
    rho: object = setting((1e-3, 1.0), "rho: LOW,HIGH (log scale) or a fixed value", type=_range)
    lr: object = setting((1e-3, 1e-1), "learning rate: LOW,HIGH (log scale) or a fixed value", type=_range)
    m: object = setting("divisors", '"divisors" (of the per-replica batch) or e.g. 1,2,4', type=_m_choices)
    erm: bool = setting(True, "also try plain ERM (--no-erm: do not)")
    nsam: bool = setting(True, "also try n-SAM, m = the per-replica batch (--no-nsam: do not)")
    n: Optional[int] = setting(None, "training examples of diag_nets / teacher_student (default: 20 / 15)")
    alpha: float = setting(0.1, "diag_nets init scale")
    model: Optional[str] = setting(None, "images: model name of keras_msam.models (default: resnet18, tiny for "
                                         "cifar_synthetic)")
    seed: int = setting(0, "seed of the data and the tuner")
    tensorboard: bool = setting(False, "log SAM scalars and HParams per trial")
    log_every: int = setting(10, "--tensorboard: steps between scalar writes")
    overwrite: bool = setting(False, "start afresh instead of resuming DIR/PROJECT")
    verbose: int = setting(0, "fit verbosity", choices=(0, 1, 2))


@dataclasses.dataclass
class Task:
    """What a task gives the tuner: a model builder, fit arguments and the hypermodel's settings."""

    build_model: object  # () -> uncompiled inner Keras model
    fit_kwargs: dict  # x (and y), validation_data, steps_per_epoch, ...
    batch_size: int
    loss: object = "mse"
    metrics: list = None
    momentum: float = 0.0
    sam_kwargs: dict = None


# ----------------------------------------------------------------------------------- tasks
def _repeated(x, y, batch_size):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch_size, drop_remainder=True)


def diag_nets_task(config):
    x, y, x_test, y_test, _ = diag_net.make_data(n=config.n or 20, seed=config.seed)
    x, x_test = np.asarray(x, "float32"), np.asarray(x_test, "float32")
    y, y_test = np.asarray(y, "float32").reshape(-1, 1), np.asarray(y_test, "float32").reshape(-1, 1)
    batch = config.batch_size or len(x)  # the papers: full-batch (S)GD and SAM
    return Task(
        build_model=lambda: diag_net.make_model(x.shape[1], config.alpha),
        fit_kwargs={"x": _repeated(x, y, batch), "validation_data": (x_test, y_test),
                    "steps_per_epoch": config.steps_per_epoch},
        batch_size=batch,
        loss=diag_net.half_squared_error,
        sam_kwargs={"normalize": False},
    )


def teacher_student_task(config):
    d, width = 2, 20
    x, y, x_test, y_test = teacher_student.make_data(config.n or 15, d, 3, 1000, config.seed, teacher="signed")
    batch = config.batch_size or len(x)
    return Task(
        build_model=lambda: two_layer_relu.make_model(d, width),
        fit_kwargs={"x": _repeated(x, y[:, None], batch), "validation_data": (x_test, y_test[:, None]),
                    "steps_per_epoch": config.steps_per_epoch},
        batch_size=batch,
        loss=diag_net.half_squared_error,
    )


def images_task(dataset, config):
    import keras

    from keras_msam.models import get_model
    from recipes.tasks import images

    data = images.load(dataset)
    batch = config.batch_size or 128
    model_name = config.model or ("tiny" if dataset == "synthetic" else "resnet18")
    return Task(
        build_model=lambda: get_model(model_name, num_classes=data.num_classes, weight_decay=5e-4),
        fit_kwargs={
            "x": images.train_dataset(data.x_train, data.y_train, batch),
            "validation_data": images.eval_dataset(data.x_val, data.y_val, batch),
            "steps_per_epoch": config.steps_per_epoch or max(1, len(data.x_train) // batch),
        },
        batch_size=batch,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        momentum=0.9,
    )


TASKS = {
    "diag_nets": diag_nets_task,
    "teacher_student": teacher_student_task,
    "cifar10": functools.partial(images_task, "cifar10"),
    "cifar100": functools.partial(images_task, "cifar100"),
    "cifar_synthetic": functools.partial(images_task, "synthetic"),
}


# ----------------------------------------------------------------------------------- the search
def search(name, config):
    """Runs the search on task `name` as configured; returns the trials (best first, see `trial_table`)."""
    import keras

    from keras_msam.tensorboard import SAMScalars
    from keras_msam.tuning import SAMHyperModel, make_tuner, trial_table

    import keras_tuner as kt

    project = config.project_name or name
    with checking_settings():  # a bad m, rho or lr range is a setting error
        task = TASKS[name](config)
        hypermodel = SAMHyperModel(
            task.build_model,
            batch_size=task.batch_size,
            rho_range=config.rho,
            m_choices=list(config.m) if isinstance(config.m, tuple) else config.m,
            include_erm=config.erm,
            include_nsam=config.nsam,
            lr_range=config.lr,
            loss=task.loss,
            metrics=task.metrics,
            momentum=task.momentum,
            sam_kwargs=task.sam_kwargs,
        )
        objective = kt.Objective(config.objective, config.direction) if config.direction else config.objective
        tuner = make_tuner(config.tuner, hypermodel, objective=objective, max_trials=config.max_trials,
                           max_epochs=config.max_epochs or config.epochs, directory=config.directory,
                           project_name=project, seed=config.seed, overwrite=config.overwrite)
    callbacks = []
    if config.tensorboard:
        log_dir = os.path.join(config.directory, project, "tensorboard")
        callbacks.append(SAMScalars(log_dir, every_n_steps=config.log_every, batch_size=hypermodel.replica_batch))
        # Keras' own callback adds the epoch metrics, the objective among them, to each trial's session.
        callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False))
    tuner.search(**task.fit_kwargs, epochs=config.epochs, callbacks=callbacks, verbose=config.verbose)
    return trial_table(tuner)


def write_summary(rows, directory):
    """summary.csv and summary.md in `directory`; returns the markdown table."""
    outputs.write_csv(os.path.join(directory, "summary.csv"), SUMMARY_COLUMNS,
                      [[row[k] for k in SUMMARY_COLUMNS] for row in rows])

    def cell(key, value):
        if value is None:
            return "None (n-SAM)" if key == "m" else "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    for row in rows:
        cells = [cell(k, row[k]) for k in SUMMARY_COLUMNS]
        if row["method"] == "erm":
            cells[SUMMARY_COLUMNS.index("m")] = "-"
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(directory, "summary.md"), "w") as f:
        f.write(table)
    return table


def _main(name, config):
    rows = search(name, config)
    print(write_summary(rows, os.path.join(config.directory, config.project_name or name)), end="")


def _experiment(name, help_text, **defaults):
    return Experiment(functools.partial(_main, name), TuneConfig, defaults, help=help_text)


EXPERIMENTS = {
    "diag_nets": _experiment("diag_nets", "the papers' diagonal net (offline)", lr=(1.0 / 30, 15.0 / 30)),
    "teacher_student": _experiment("teacher_student", "2-layer ReLU student of a 3-neuron teacher (offline)",
                                   lr=(1e-3, 0.3)),
    "cifar10": _experiment("cifar10", "PreAct ResNet-18 on CIFAR-10 (TFDS)", rho=(0.01, 0.5), lr=(0.01, 0.3)),
    "cifar100": _experiment("cifar100", "PreAct ResNet-18 on CIFAR-100 (TFDS)", rho=(0.01, 0.5), lr=(0.01, 0.3)),
    "cifar_synthetic": _experiment("cifar_synthetic", "tiny ResNet on random CIFAR-shaped data (offline)",
                                   rho=(0.01, 0.5), lr=(0.01, 0.3)),
}
DEFAULT_EXPERIMENT = "diag_nets"

if __name__ == "__main__":
    from recipes import cli

    sys.exit(cli.main(["tune", *sys.argv[1:]]))
