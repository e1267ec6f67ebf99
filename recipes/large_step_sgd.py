"""Recipe: "SGD with large step sizes learns sparse features" (Andriushchenko et al., ICML 2023).

Each experiment trains the same initialisation with SGD under several step-size schedules:

- "constant": a constant small step size `small_lr` the whole run;
- "p=0.1", "p=0.3", "p=0.5": the large step `lr` for a fraction p of the steps, then lr / 10, and
  lr / 100 from 90 % (`keras_msam.schedules.LargeStep`), optionally with its exponential warm-up;

then measures the sparsity of what was learned (`keras_msam.sparsity`) and, where there is a test set,
the test loss. The papers' claims: the longer the large-step phase, the sparser the features and the
lower the test loss, at a comparable final train loss; the train loss plateaus during the large phase.

Experiments (`EXPERIMENTS`, every number a default you can override with `--set key=value`):

- diag_nets / diag_nets_small: diagonal linear nets f(x) = <x, u * v> (u0 = alpha, v0 = 0) on sparse
  regression (n = 80, d = 200, r = 20 / n = 40, d = 100, r = 20), SGD one example a step;
  sparsity = number of non-zero coordinates of beta = u * v (|beta_i| > nnz_tol), and the Jacobian rank.
- relu_1d: the 12-point 1D regression, a 1 -> 100 -> 1 ReLU net, batch-1 SGD with the warm-up;
  feature sparsity of the hidden layer on the 12 points and the Jacobian rank.
- teacher_student: n = 15 points in d = 2, a teacher of 3 ReLU neurons, a student of 20;
  feature sparsity (the de-duplicated active-ReLU fraction), raw active fraction, Jacobian rank, test loss.
- resnet18_cifar10: PreAct ResNet-18 on CIFAR-10, SGD momentum 0.9, weight decay 5e-4, augmentation,
  lr 0.05 decayed at p vs a constant small lr 0.002 (through `recipes.resnet`); feature sparsity of the
  last ReLU layer with threshold 0.95 on 1000 subsampled units.

Outputs in --out: results.json, train_loss.png (train loss and step size over time), sparsity_vs_p.png,
test_loss_vs_p.png (when there is a test set), functions.png (relu_1d).

    python -m recipes.large_step_sgd diag_nets --out runs/sparse/diag
    python -m recipes.large_step_sgd teacher_student --out runs/sparse/ts --steps 20000 --json
"""

import argparse
import copy
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_msam import schedules, sparsity
from recipes.results import json_safe

_SCHEDULE = dict(
    decay_at=(0.1, 0.3, 0.5), warmup=False, second_decay_at=0.9, factor=10.0, warmup_rate=100.0, warmup_end=None
)
_SGD = dict(batch_size=1, momentum=0.0, rho=0.0, seed=0, log_points=50, steps_per_execution=500)

EXPERIMENTS = {
    "diag_nets": dict(
        task="diag_net", n=80, d=200, r=20, n_test=1000, alpha=0.1, nnz_tol=1e-2,
        lr=0.22, small_lr=0.022, steps=4000, **_SCHEDULE, **_SGD,
    ),
    "diag_nets_small": dict(
        task="diag_net", n=40, d=100, r=20, n_test=1000, alpha=0.1, nnz_tol=1e-2,
        lr=0.22, small_lr=0.022, steps=4000, **_SCHEDULE, **_SGD,
    ),
    "relu_1d": dict(
        task="relu_1d", width=100, hidden_scale=1.0, bias_scale=1.0, output_scale=0.1,
        lr=0.08, small_lr=0.008, steps=20_000, **{**_SCHEDULE, "warmup": True, "warmup_end": 0.05}, **_SGD,
    ),
    "teacher_student": dict(
        task="teacher_student", n=15, d=2, teacher_width=3, width=20, n_test=1000, init_scale=1.0,
        lr=0.12, small_lr=0.012, steps=1000, **_SCHEDULE, **{**_SGD, "log_points": 20, "steps_per_execution": 50},
    ),
    "resnet18_cifar10": dict(
        task="resnet", dataset="cifar10", model="resnet18", data_dir=None, epochs=200, lr=0.05,
        small_lr=0.002, decay_at=(0.1, 0.3, 0.5), warmup=False, momentum=0.9, weight_decay=5e-4, batch_size=128,
        augment=True, rho=0.0, seed=0, threshold=0.95, max_units=1000, sparsity_examples=1000,
        feature_layer="final_relu", steps_per_epoch=None,
    ),
}


# ------------------------------------------------------------------------------------------ config


def get_config(name, **overrides):
    """A copy of experiment `name`'s settings with `overrides` applied (unknown keys are errors)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {name!r}; valid names: {sorted(EXPERIMENTS)}.")
    config = copy.deepcopy(EXPERIMENTS[name])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} for experiment {name!r}; its settings are {sorted(config)}.")
    config.update(overrides)
    config["decay_at"] = tuple(float(p) for p in np.atleast_1d(config["decay_at"]))
    return config


def runs(config):
    """(label, p) of every run: the constant small step (p None), then the large step decayed at each p."""
    return [("constant", None)] + [(f"p={p:g}", p) for p in config["decay_at"]]


def make_schedule(config, p, total_steps):
    if p is None:
        return schedules.Constant(config["small_lr"])
    return schedules.LargeStep(
        config["lr"],
        total_steps,
        decay_at=p,
        warmup=config["warmup"],
        second_decay_at=config["second_decay_at"],
        factor=config["factor"],
        warmup_rate=config["warmup_rate"],
        warmup_end=config["warmup_end"],
    )


# ------------------------------------------------------------------------------------------ small tasks


def half_squared_error(y_true, y_pred):
    """(f - y)^2 / 2 per example: SGD steps by lr * grad(r^2 / 2), as in the papers' code."""
    return 0.5 * ops.mean(ops.square(y_pred - y_true), axis=-1)


def _loss(model, x, y):
    return float(np.mean((model.predict_on_batch(x).reshape(-1) - y) ** 2) / 2)


class DiagNetTask:
    """Sparse regression with a diagonal linear net (the data and model of `recipes.diag_nets`)."""

    metrics = ("beta_nnz",)

    def __init__(self, config):
        from recipes import diag_nets

        self._diag_nets = diag_nets
        self.config = config
        x, y, x_test, y_test, self.beta_star = diag_nets.make_data(
            config["n"], config["d"], config["r"], config["n_test"], config["seed"]
        )
        self.x, self.y = x.astype("float32"), y.astype("float32")
        self.x_test, self.y_test = x_test.astype("float32"), y_test.astype("float32")

    def make_model(self):
        return self._diag_nets.make_model(self.config["d"], self.config["alpha"])

    def measure(self, model):
        u, v = (w.numpy() for w in model.get_layer("diag").weights)
        beta = u * v
        return {
            "train_loss": _loss(model, self.x, self.y),
            "test_loss": _loss(model, self.x_test, self.y_test),
            "beta_nnz": int(np.sum(np.abs(beta) > self.config["nnz_tol"])),
            "beta": beta.tolist(),
        }


class _ReLUNetTask:
    """A one-hidden-layer ReLU net x -> a^T relu(W x + b) (layer "hidden"), initialised from NumPy."""

    metrics = ("feature_sparsity", "raw_sparsity", "jacobian_rank")

    def make_model(self):
        d, width = self.x.shape[1], self.config["width"]
        inputs = keras.Input((d,))
        hidden = keras.layers.Dense(width, activation="relu", name="hidden")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="output")(hidden))
        model.set_weights([w.astype("float32") for w in self.initial_weights()])
        return model

    def measure(self, model):
        results = {
            "train_loss": _loss(model, self.x, self.y),
            "feature_sparsity": sparsity.feature_sparsity(model, "hidden", self.x),
            "raw_sparsity": sparsity.feature_sparsity(model, "hidden", self.x, raw=True),
            "jacobian_rank": sparsity.jacobian_rank(model, self.x),
        }
        if self.x_test is not None:
            results["test_loss"] = _loss(model, self.x_test, self.y_test)
        return results


class ReLU1DTask(_ReLUNetTask):
    """The 12-point 1D regression; init: hidden weights +-hidden_scale, biases N(0, bias_scale^2),
    output weights N(0, output_scale^2)."""

    X = (np.arange(-5.5, 6.0, 1.0) / 4 + 0.07).astype("float32")
    Y = (0.345 + np.array([-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1])).astype("float32")

    def __init__(self, config):
        self.config = config
        self.x, self.y = self.X[:, None], self.Y
        self.x_test = self.y_test = None

    def initial_weights(self):
        c, rng = self.config, np.random.default_rng(self.config["seed"])
        width = c["width"]
        return [
            c["hidden_scale"] * rng.choice([-1.0, 1.0], size=(1, width)),
            c["bias_scale"] * rng.normal(size=width),
            c["output_scale"] * rng.normal(size=(width, 1)),
        ]

    def measure(self, model):
        results = super().measure(model)
        grid = np.linspace(self.X.min() - 0.25, self.X.max() + 0.25, 400, dtype="float32")
        results["function"] = {"x": grid.tolist(), "f": model.predict_on_batch(grid[:, None]).reshape(-1).tolist()}
        return results


class TeacherStudentTask(_ReLUNetTask):
    """x ~ N(0, I_d); teacher f*(x) = sum_j relu(<w*_j, x>) with unit w*_j; a student of `width` neurons
    with biases, init W ~ N(0, init_scale^2 / d), b = 0, a ~ N(0, init_scale^2 / width)."""

    def __init__(self, config):
        self.config = config
        rng = np.random.default_rng(config["seed"])
        teacher = rng.normal(size=(config["d"], config["teacher_width"]))
        self.teacher = teacher / np.linalg.norm(teacher, axis=0)

        def draw(n):
            x = rng.normal(size=(n, config["d"])).astype("float32")
            return x, np.maximum(x @ self.teacher, 0).sum(axis=1).astype("float32")

        (self.x, self.y), (self.x_test, self.y_test) = draw(config["n"]), draw(config["n_test"])

    def initial_weights(self):
        c, rng = self.config, np.random.default_rng(self.config["seed"] + 1)
        d, width, s = c["d"], c["width"], c["init_scale"]
        kernel = s * rng.normal(size=(d, width)) / np.sqrt(d)
        return [kernel, np.zeros(width), s * rng.normal(size=(width, 1)) / np.sqrt(width)]


TASKS = {"diag_net": DiagNetTask, "relu_1d": ReLU1DTask, "teacher_student": TeacherStudentTask}


# ------------------------------------------------------------------------------------------ training


class _Curve(keras.callbacks.Callback):
    """Full-batch train loss and step size at step 0 and after every epoch (= one log interval)."""

    def __init__(self, task, bar=None):
        super().__init__()
        self.task, self.bar = task, bar
        self.steps, self.train_loss, self.lr = [], [], []

    def _record(self):
        step = int(self.model.optimizer.iterations.numpy())
        self.steps.append(step)
        self.train_loss.append(_loss(self.model, self.task.x, self.task.y))
        self.lr.append(float(self.model.optimizer.learning_rate.numpy()))

    def on_train_begin(self, logs=None):
        self._record()

    def on_epoch_end(self, epoch, logs=None):
        self._record()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.train_loss[-1]:.2e}", lr=f"{self.lr[-1]:.2g}")
            self.bar.update(1)
        if not np.isfinite(self.train_loss[-1]):
            self.model.stop_training = True


def train_small(task, config, p, progress=False, label=""):
    """Trains a fresh model of `task` with SGD under run p's schedule; returns (model, curve dict)."""
    keras.utils.set_random_seed(config["seed"])
    steps, points = int(config["steps"]), int(config["log_points"])
    if steps < points:
        raise ValueError(f"steps={steps} must be >= log_points={points} (one train-loss point per interval).")
    per_epoch = steps // points
    total = per_epoch * points
    net = task.make_model()
    model = net
    if config["rho"] > 0:
        from keras_msam import SAMModel

        model = SAMModel(net, rho=config["rho"], m=1)
    model.compile(
        optimizer=keras.optimizers.SGD(make_schedule(config, p, total), momentum=config["momentum"]),
        loss=half_squared_error,
        steps_per_execution=max(1, min(int(config["steps_per_execution"]), per_epoch)),
    )
    n = len(task.y)
    data = tf.data.Dataset.from_tensor_slices((task.x, task.y[:, None]))
    data = data.shuffle(n, seed=config["seed"], reshuffle_each_iteration=True).repeat().batch(config["batch_size"])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=points, desc=label, unit="log", leave=False)
    curve = _Curve(task, bar)
    try:
        model.fit(data, steps_per_epoch=per_epoch, epochs=points, verbose=0, callbacks=[curve], shuffle=False)
    finally:
        if bar is not None:
            bar.close()
    return net, {"step": curve.steps, "train_loss": curve.train_loss, "lr": curve.lr}


def run_small(config, progress=False):
    task = TASKS[config["task"]](config)
    results = []
    for label, p in runs(config):
        started = time.time()
        model, curve = train_small(task, config, p, progress, label)
        metrics = task.measure(model)
        results.append({"label": label, "decay_at": p, "curve": curve, "metrics": metrics,
                        "seconds": time.time() - started})
    return task.metrics, results


# ------------------------------------------------------------------------------------------ ResNet


def run_resnet(config, out, progress=False):
    """ResNet-18 / CIFAR-10 through `recipes.resnet` (imported here: it needs the CIFAR data)."""
    try:
        from recipes import cifar, resnet
        from keras_msam.models import get_model
    except ImportError as error:
        raise RuntimeError(
            f"the ResNet experiment needs recipes.resnet, recipes.cifar and keras_msam.models ({error})."
        ) from error
    data = cifar.load(config["dataset"], config["data_dir"], download=False)  # clear error if absent
    x_probe = cifar.to_unit_range(data.x_train[: config["sparsity_examples"]]).numpy()
    results = []
    for label, p in runs(config):
        run_out = os.path.join(out, label.replace("=", ""))
        lr, schedule = (config["small_lr"], "constant") if p is None else (config["lr"], "largestep")
        run_config = resnet.ResNetConfig(
            dataset=config["dataset"], data_dir=config["data_dir"], download=False, augment=config["augment"],
            model=config["model"], rho=config["rho"], epochs=config["epochs"], batch_size=config["batch_size"],
            lr=lr, momentum=config["momentum"], wd=config["weight_decay"], schedule=schedule,
            decay_at=p if p is not None else 0.5, warmup=config["warmup"], out=run_out, seed=config["seed"],
            steps_per_epoch=config["steps_per_epoch"], verbose=1 if progress else 0,
            sam_window=(0.0, 1.0) if config["rho"] > 0 else (1.0, 1.0),  # rho = 0: plain SGD steps, one pass
        )
        started = time.time()
        summary = resnet.train(run_config)
        net = get_model(config["model"], data.num_classes, weight_decay=config["weight_decay"])
        net.load_weights(os.path.join(run_out, "final.weights.h5"))
        history = summary.get("history") or []  # one dict per epoch
        kwargs = dict(threshold=config["threshold"], max_units=config["max_units"], seed=config["seed"])
        metrics = {
            "train_loss": history[-1].get("loss") if history else None,
            "test_error": summary.get("test_error"),
            "test_loss": summary.get("test_loss"),
            "train_error": summary.get("train_error"),
            "feature_sparsity": sparsity.feature_sparsity(net, config["feature_layer"], x_probe, **kwargs),
            "raw_sparsity": sparsity.feature_sparsity(net, config["feature_layer"], x_probe, raw=True, **kwargs),
        }
        curve = {
            "step": [row["epoch"] for row in history],
            "train_loss": [row.get("loss") for row in history],
            "lr": [row["lr"] for row in history if "lr" in row],
        }
        results.append({"label": label, "decay_at": p, "curve": curve, "metrics": metrics,
                        "seconds": time.time() - started})
    return ("feature_sparsity", "raw_sparsity"), results


# ------------------------------------------------------------------------------------------ outputs


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _vs_p(ax, results, key, ylabel, log=False):
    decayed = [r for r in results if r["decay_at"] is not None and r["metrics"].get(key) is not None]
    ps, values = [r["decay_at"] for r in decayed], [r["metrics"][key] for r in decayed]
    ax.plot(ps, values, "o-", label="large step, decayed at p")
    for r in results:
        if r["decay_at"] is None and r["metrics"].get(key) is not None:
            ax.axhline(r["metrics"][key], color="gray", ls="--", label="constant small step")
    ax.set_xlabel("p (fraction of training at the large step)")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)


def write_outputs(name, config, metric_names, results, out):
    """results.json and the PNG plots in `out`; returns the list of files written."""
    os.makedirs(out, exist_ok=True)
    plt, files = _pyplot(), []

    def save(fig, filename):
        fig.tight_layout()
        fig.savefig(os.path.join(out, filename), dpi=110)
        plt.close(fig)
        files.append(filename)

    unit = "epoch" if config["task"] == "resnet" else "step"
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for r in results:
        ax_loss.plot(r["curve"]["step"], r["curve"]["train_loss"], label=r["label"])
        if r["curve"]["lr"]:
            ax_lr.plot(r["curve"]["step"][: len(r["curve"]["lr"])], r["curve"]["lr"], label=r["label"])
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("train loss")
    ax_loss.set_title(f"{name}: the train loss plateaus during the large-step phase")
    ax_loss.legend(fontsize=8)
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("step size")
    ax_lr.set_xlabel(unit)
    save(fig, "train_loss.png")

    fig, axes = plt.subplots(1, len(metric_names), figsize=(4.5 * len(metric_names), 3.6), squeeze=False)
    for ax, key in zip(axes[0], metric_names):
        _vs_p(ax, results, key, key.replace("_", " "))
    fig.suptitle(f"{name}: sparsity vs the length of the large-step phase")
    save(fig, "sparsity_vs_p.png")

    test_key = "test_error" if any("test_error" in r["metrics"] for r in results) else "test_loss"
    if any(r["metrics"].get(test_key) is not None for r in results):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        _vs_p(ax, results, test_key, test_key.replace("_", " "), log=test_key == "test_loss")
        ax.set_title(f"{name}: {test_key.replace('_', ' ')} vs p")
        save(fig, f"{test_key}_vs_p.png")

    if all("function" in r["metrics"] for r in results):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in results:
            ax.plot(r["metrics"]["function"]["x"], r["metrics"]["function"]["f"], label=r["label"])
        ax.plot(ReLU1DTask.X, ReLU1DTask.Y, "ko", label="data")
        ax.legend(fontsize=8)
        ax.set_title(f"{name}: learned functions")
        save(fig, "functions.png")

    summary = {"experiment": name, "config": config, "metrics": list(metric_names), "runs": results}
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(json_safe(summary), handle, indent=1)
    files.append("results.json")
    return files


def table(name, metric_names, results):
    """A markdown table: one row per run, the train/test loss and the sparsity measures."""
    keys = ["train_loss"] + [k for k in ("test_loss", "test_error") if any(k in r["metrics"] for r in results)]
    keys += list(metric_names)
    lines = [f"| {name} run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in results:
        cells = []
        for key in keys:
            value = r["metrics"].get(key)
            cells.append("-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value))
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ entry points


def run_experiment(name, out, progress=False, **overrides):
    """Runs experiment `name` with `overrides`, writes its outputs into `out`, returns the summary dict."""
    config = get_config(name, **overrides)
    if config["task"] == "resnet":
        metric_names, results = run_resnet(config, out, progress)
    else:
        metric_names, results = run_small(config, progress)
    write_outputs(name, config, metric_names, results, out)
    return {"experiment": name, "config": config, "metrics": list(metric_names), "runs": results}


def _value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser():
    parser = argparse.ArgumentParser(
        prog="msam-sparse",
        description="SGD with large step sizes learns sparse features: train with a constant small step and "
        "with a large step decayed at fractions p, then measure sparsity, Jacobian rank and test loss.",
    )
    parser.add_argument("experiment", help=f"one of {sorted(EXPERIMENTS)}")
    parser.add_argument("--out", required=True, help="directory for results.json and the plots")
    parser.add_argument("--steps", type=int, help="SGD steps per run (small tasks; ResNet: use --set epochs=N)")
    parser.add_argument("--lr", type=float, help="the large step size")
    parser.add_argument("--small-lr", type=float, help="the constant small step size")
    parser.add_argument("--decay-at", type=float, nargs="+", help="fractions p at which the large step is decayed")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="any other setting of the experiment")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE; got {item!r}.")
        overrides[key] = _value(text)
    for key in ("steps", "lr", "small_lr", "decay_at", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    try:
        get_config(args.experiment, **overrides)
    except ValueError as error:
        parser.error(str(error))
    summary = run_experiment(args.experiment, args.out, progress=not args.no_progress, **overrides)
    if args.json:
        print(json.dumps(json_safe(summary)))
    else:
        print(table(args.experiment, summary["metrics"], summary["runs"]))
        print(f"results and plots in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
