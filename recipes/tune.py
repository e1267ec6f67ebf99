"""`msam-tune RECIPE`: search SAM's rho and m (and the learning rate) on one of the recipes with KerasTuner.

    python -m keras_msam.tune_cli diag_nets --tuner random --max-trials 20 --directory tune_runs
    python -m recipes.tune teacher_student --tuner hyperband --max-epochs 9 --tensorboard

Writes the tuner's directory DIR/PROJECT (PROJECT defaults to the recipe name), and there
summary.csv / summary.md: one row per trial, best first (trial_id, method, rho, m, lr, objective);
the table is also printed. With --tensorboard, DIR/PROJECT/tensorboard holds one run per trial
(SAM scalars every --log-every steps, Keras' epoch metrics in its train/ and validation/ runs, HParams
session): `tensorboard --logdir DIR/PROJECT/tensorboard`.

Recipes (all offline unless noted):
- diag_nets: the papers' diagonal linear network f(x) = <x, u*v> (`recipes.diag_nets`: n=20, d=30,
  r=3, alpha=0.1), loss ||X(u*v) - y||^2 / (2n), full-batch steps, unnormalized ascent as in the
  papers' code; objective on the 1000 test points (the papers' "test loss"). rho is SAMModel's: for
  m=1 it is twice the papers' 1-SAM rho (see recipes/diag_nets.py).
- teacher_student: 2-layer ReLU student (20 units) fitting a 3-neuron teacher from n=15 points in d=2.
- cifar10 / cifar100 / cifar_synthetic: PreAct ResNet-18 (`--model`) on CIFAR through TFDS (downloads
  unless already prepared); cifar_synthetic is random CIFAR-shaped data with the tiny model, offline.
"""

import argparse
import csv
import dataclasses
import os
import sys

import numpy as np

OBJECTIVE_DIRECTIONS = ("min", "max")
SUMMARY_COLUMNS = ("trial_id", "method", "rho", "m", "lr", "objective")


@dataclasses.dataclass
class Task:
    """What a recipe gives the tuner: a model builder, fit arguments and the hypermodel defaults."""

    build_model: object  # () -> uncompiled inner Keras model
    fit_kwargs: dict  # x (and y), validation_data, steps_per_epoch, ...
    batch_size: int
    loss: object = "mse"
    metrics: list = None
    rho_range: tuple = (1e-3, 1.0)
    lr_range: tuple = (1e-3, 1e-1)
    momentum: float = 0.0
    sam_kwargs: dict = None


def half_mse(y_true, y_pred):
    """||f - y||^2 / (2 n): the papers' regression loss (half Keras' mean squared error)."""
    import keras

    return 0.5 * keras.ops.mean(keras.ops.square(y_pred - y_true), axis=-1)


# ----------------------------------------------------------------------------------- recipes
def _repeated(x, y, batch_size):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch_size, drop_remainder=True)


def diag_nets(args):
    from recipes import diag_nets as dn

    x, y, x_test, y_test, _ = dn.make_data(n=args.n or 20, seed=args.seed)
    x, x_test = np.asarray(x, "float32"), np.asarray(x_test, "float32")
    y, y_test = np.asarray(y, "float32").reshape(-1, 1), np.asarray(y_test, "float32").reshape(-1, 1)
    batch = args.batch_size or len(x)  # the papers: full-batch (S)GD and SAM
    return Task(
        build_model=lambda: dn.make_model(x.shape[1], args.alpha),
        fit_kwargs={
            "x": _repeated(x, y, batch),
            "validation_data": (x_test, y_test),
            "steps_per_epoch": args.steps_per_epoch,
        },
        batch_size=batch,
        loss=dn.half_squared_error,
        rho_range=(1e-3, 1.0),
        lr_range=(1.0 / 30, 15.0 / 30),  # gamma = c / d, c in [1, 15]
        sam_kwargs={"normalize": False},
    )


def teacher_student(args):
    import keras

    rng = np.random.default_rng(args.seed)
    d, n, teacher_units, student_units = 2, args.n or 15, 3, 20
    w_teacher = rng.standard_normal((d, teacher_units))
    a_teacher = rng.choice([-1.0, 1.0], teacher_units)

    def teacher(x):
        return (np.maximum(x @ w_teacher, 0.0) @ a_teacher)[:, None].astype("float32")

    x = rng.standard_normal((n, d)).astype("float32")
    x_test = rng.standard_normal((1000, d)).astype("float32")
    batch = args.batch_size or n

    def build_model():
        return keras.Sequential(
            [keras.Input((d,)), keras.layers.Dense(student_units, "relu"), keras.layers.Dense(1, use_bias=False)]
        )

    return Task(
        build_model=build_model,
        fit_kwargs={
            "x": _repeated(x, teacher(x), batch),
            "validation_data": (x_test, teacher(x_test)),
            "steps_per_epoch": args.steps_per_epoch,
        },
        batch_size=batch,
        loss=half_mse,
        lr_range=(1e-3, 0.3),
    )


def _cifar(name):
    def recipe(args):
        import keras

        from keras_msam.models.preact_resnet import get_model
        from recipes import cifar

        data = cifar.load(name)
        batch = args.batch_size or 128
        model_name = args.model or ("tiny" if name == "synthetic" else "resnet18")
        return Task(
            build_model=lambda: get_model(model_name, num_classes=data.num_classes, weight_decay=5e-4),
            fit_kwargs={
                "x": cifar.train_dataset(data.x_train, data.y_train, batch),
                "validation_data": cifar.eval_dataset(data.x_val, data.y_val, batch),
                "steps_per_epoch": args.steps_per_epoch or max(1, len(data.x_train) // batch),
            },
            batch_size=batch,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            rho_range=(0.01, 0.5),
            lr_range=(0.01, 0.3),
            momentum=0.9,
        )

    return recipe


RECIPES = {
    "diag_nets": diag_nets,
    "teacher_student": teacher_student,
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "cifar_synthetic": _cifar("synthetic"),
}


def get_recipe(name):
    """The recipe function `args -> Task` called `name`."""
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; valid recipes: {', '.join(sorted(RECIPES))}.")
    return RECIPES[name]


# ----------------------------------------------------------------------------------- CLI
def _positive_floats(text):
    values = [float(v) for v in text.split(",")]
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH or VALUE (positive numbers); got {text!r}")
    return tuple(values) if len(values) == 2 else values[0]


def _m_choices(text):
    if text == "divisors":
        return text
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected "divisors" or a comma-separated list of ints; got {text!r}')


def build_parser():
    parser = argparse.ArgumentParser(
        prog="msam-tune", description="KerasTuner search over SAM's rho and m (and the learning rate) on a recipe."
    )
    parser.add_argument("recipe", help=f"one of: {', '.join(sorted(RECIPES))}")
    parser.add_argument("--tuner", choices=("random", "bayesian", "hyperband"), default="random")
    parser.add_argument("--max-trials", type=int, default=10, help="trials (random, bayesian)")
    parser.add_argument("--max-epochs", type=int, default=None, help="hyperband's longest run (default --epochs)")
    parser.add_argument("--objective", default="val_loss", help="metric of the fit logs to optimize")
    parser.add_argument("--direction", choices=OBJECTIVE_DIRECTIONS, default=None, help="default: KerasTuner's guess")
    parser.add_argument("--directory", default="tune_runs", help="where the tuner writes (DIR/PROJECT)")
    parser.add_argument("--project-name", default=None, help="default: the recipe name")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: the recipe's)")
    parser.add_argument("--rho", type=_positive_floats, default=None, help="LOW,HIGH (log scale) or a fixed value")
    parser.add_argument("--lr", type=_positive_floats, default=None, help="LOW,HIGH (log scale) or a fixed value")
    parser.add_argument("--m", type=_m_choices, default="divisors", help='"divisors" or e.g. 1,2,4 (per replica)')
    parser.add_argument("--no-erm", action="store_true", help="do not try plain ERM")
    parser.add_argument("--no-nsam", action="store_true", help="do not try n-SAM (m = the per-replica batch)")
    parser.add_argument("--n", type=int, default=None, help="training examples of diag_nets / teacher_student")
    parser.add_argument("--alpha", type=float, default=0.1, help="diag_nets init scale")
    parser.add_argument("--model", default=None, help="cifar: model name of keras_msam.models.preact_resnet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensorboard", action="store_true", help="log SAM scalars and HParams per trial")
    parser.add_argument("--log-every", type=int, default=10, help="--tensorboard: steps between scalar writes")
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming DIR/PROJECT")
    parser.add_argument("--verbose", type=int, default=0, help="fit verbosity")
    return parser


def write_summary(rows, directory):
    """summary.csv and summary.md in `directory`; returns the markdown table."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if row[k] is None else row[k]) for k in SUMMARY_COLUMNS} for row in rows)

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


def run(args):
    """Runs the search of parsed `args`; returns the summary rows (best first)."""
    import keras
    import keras_tuner as kt

    from keras_msam.tensorboard import SAMScalars
    from keras_msam.tuning import SAMHyperModel, make_tuner, trial_table

    task = get_recipe(args.recipe)(args)
    hypermodel = SAMHyperModel(
        task.build_model,
        batch_size=task.batch_size,
        rho_range=args.rho or task.rho_range,
        m_choices=args.m,
        include_erm=not args.no_erm,
        include_nsam=not args.no_nsam,
        lr_range=args.lr or task.lr_range,
        loss=task.loss,
        metrics=task.metrics,
        momentum=task.momentum,
        sam_kwargs=task.sam_kwargs,
    )
    objective = kt.Objective(args.objective, args.direction) if args.direction else args.objective
    project = args.project_name or args.recipe
    tuner = make_tuner(
        args.tuner,
        hypermodel,
        objective=objective,
        max_trials=args.max_trials,
        max_epochs=args.max_epochs or args.epochs,
        directory=args.directory,
        project_name=project,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    callbacks = []
    if args.tensorboard:
        log_dir = os.path.join(args.directory, project, "tensorboard")
        callbacks.append(SAMScalars(log_dir, every_n_steps=args.log_every, batch_size=hypermodel.replica_batch))
        # Keras' own callback adds the epoch metrics, the objective among them, to each trial's session.
        callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False))
    tuner.search(**task.fit_kwargs, epochs=args.epochs, callbacks=callbacks, verbose=args.verbose)
    return trial_table(tuner)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.recipe not in RECIPES:
        parser.error(f"unknown recipe {args.recipe!r}; valid recipes: {', '.join(sorted(RECIPES))}")
    rows = run(args)
    table = write_summary(rows, os.path.join(args.directory, args.project_name or args.recipe))
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
