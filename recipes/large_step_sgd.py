"""Recipe: "SGD with large step sizes learns sparse features" (Andriushchenko et al., ICML 2023).

Each experiment trains the same initialisation with SGD under several step-size schedules:

- "constant": a constant small step size `small_lr` the whole run;
- "p=0.1", "p=0.3", "p=0.5": the large step `lr` for a fraction p of the steps, then lr / 10, and
  lr / 100 from 90 % (`keras_msam.schedules.LargeStep`), optionally with its exponential warm-up;

then measures the sparsity of what was learned (`keras_msam.sparsity`) and, where there is a test set,
the test loss. The papers' claims: the longer the large-step phase, the sparser the features and the
lower the test loss, at a comparable final train loss; the train loss plateaus during the large phase.

Experiments (`msam large_step_sgd EXPERIMENT [--field value ...]`; each config class holds its defaults):

- diag_nets / diag_nets_small (`DiagNetsConfig`): diagonal linear nets f(x) = <x, u * v> (u0 = alpha,
  v0 = 0) on sparse regression (n = 80, d = 200, r = 20 / n = 40, d = 100, r = 20), SGD one example a
  step; sparsity = number of non-zero coordinates of beta = u * v (|beta_i| > nnz_tol).
- relu_1d (`Relu1DConfig`): the 12-point 1D regression, a 1 -> 100 -> 1 ReLU net, batch-1 SGD with the
  warm-up; feature sparsity of the hidden layer on the 12 points and the Jacobian rank.
- teacher_student (`TeacherStudentConfig`): n = 15 points in d = 2, a teacher of 3 ReLU neurons, a
  student of 20; feature sparsity (the de-duplicated active-ReLU fraction), raw active fraction,
  Jacobian rank, test loss.
- resnet18_cifar10 (`ResNetSparsityConfig`): PreAct ResNet-18 on CIFAR-10, SGD momentum 0.9, weight
  decay 5e-4, augmentation, lr 0.05 decayed at p vs a constant small lr 0.002 (through `recipes.resnet`);
  feature sparsity of the last ReLU layer with threshold 0.95 on 1000 subsampled units.

The small tasks run in `runner.StepLoop` (no XLA), one log interval per compiled call, on the examples
of `sampling` (default: shuffled epochs, as a shuffled tf.data pipeline gives them). Outputs in --out:
results.json, train_loss.png (train loss and step size over time), sparsity_vs_p.png,
test_loss_vs_p.png (when there is a test set), functions.png (relu_1d).

    msam large_step_sgd diag_nets --out runs/sparse/diag
    msam large_step_sgd teacher_student --out runs/sparse/ts --steps 20000 --json
"""

import dataclasses
import functools
import os
import sys
import time
from typing import Optional

import keras
import numpy as np

from keras_msam import SAMModel, schedules, sparsity
from recipes import config as config_lib
from recipes import outputs, runner
from recipes.config import Experiment, setting
from recipes.tasks import diag_net, relu_1d, teacher_student, two_layer_relu

OUT = "results/large_step_sgd"


# ------------------------------------------------------------------------------------------ configs
@dataclasses.dataclass
class LargeStepConfig:
    """The step-size schedules and SGD of every small task (the task classes below set their values)."""

    lr: float = setting(0.22, "the large step size")
    small_lr: float = setting(0.022, "the constant small step size")
    steps: int = setting(4000, "SGD steps per run")
    decay_at: tuple[float, ...] = setting((0.1, 0.3, 0.5), "fractions p at which the large step is decayed "
                                                          "(one run each)")
    warmup: bool = setting(False, "exponential warm-up of the large step (LargeStep)")
    second_decay_at: float = setting(0.9, "fraction of the steps at which the step is divided a second time")
    factor: float = setting(10.0, "each decay divides the step size by this")
    warmup_rate: float = setting(100.0, "warm-up: lr0 * e^(rate * t / T)")
    warmup_end: Optional[float] = setting(None, "fraction at which the warm-up reaches lr (default: p)")
    batch_size: int = setting(1, "examples per SGD step")
    momentum: float = setting(0.0, "SGD momentum")
    rho: float = setting(0.0, "SAM radius (m = 1); 0: plain SGD steps")
    seed: int = setting(0, "seed of the data, the initialisation and the example order")
    log_points: int = setting(50, "train-loss points per run (also steps per compiled call = steps / log_points)")
    sampling: str = setting("shuffled_epochs", "which examples each step takes", choices=tuple(runner.SAMPLINGS))
    out: str = setting(OUT, "directory for results.json and the plots")
    json: bool = setting(False, "print the results as JSON on stdout")
    progress: bool = setting(True, "show the progress on stderr")

    def __post_init__(self):
        self.decay_at = tuple(float(p) for p in np.atleast_1d(self.decay_at))
        if not isinstance(self.steps, int) or not isinstance(self.log_points, int) or self.log_points < 1:
            raise ValueError(f"steps and log_points must be ints >= 1; got steps={self.steps!r}, "
                             f"log_points={self.log_points!r}.")
        if self.steps < self.log_points:
            raise ValueError(f"steps={self.steps} must be >= log_points={self.log_points} "
                             "(one train-loss point per interval).")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got batch_size={self.batch_size!r}.")
        if self.rho < 0:
            raise ValueError(f"rho must be >= 0 (0: plain SGD); got rho={self.rho!r}.")
        for _, p in runs(self):  # the schedules check lr, small_lr, decay_at, factor, warm-up
            make_schedule(self, p, self.total_steps)

    @property
    def total_steps(self):
        """`steps` rounded down to a whole number of log intervals."""
        return self.steps // self.log_points * self.log_points


@dataclasses.dataclass
class DiagNetsConfig(LargeStepConfig):
    n: int = setting(80, "training examples")
    d: int = setting(200, "input dimension")
    r: int = setting(20, "non-zero coordinates of the teacher beta*")
    n_test: int = setting(1000, "test examples")
    alpha: float = setting(0.1, "init scale: u0 = alpha, v0 = 0")
    nnz_tol: float = setting(1e-2, "beta_i counts as non-zero when |beta_i| > nnz_tol")

    def __post_init__(self):
        super().__post_init__()
        diag_net.check_sizes(self.n, self.d, self.r, self.n_test)


@dataclasses.dataclass
class Relu1DConfig(LargeStepConfig):
    lr: float = setting(0.08, "the large step size")
    small_lr: float = setting(0.008, "the constant small step size")
    steps: int = setting(20_000, "SGD steps per run")
    warmup: bool = setting(True, "exponential warm-up of the large step (LargeStep)")
    warmup_end: Optional[float] = setting(0.05, "fraction at which the warm-up reaches lr (default: p)")
    width: int = setting(100, "hidden units")
    hidden_scale: float = setting(1.0, "init: hidden weights +-hidden_scale")
    bias_scale: float = setting(1.0, "init: hidden biases N(0, bias_scale^2)")
    output_scale: float = setting(0.1, "init: output weights N(0, output_scale^2)")


@dataclasses.dataclass
class TeacherStudentConfig(LargeStepConfig):
    lr: float = setting(0.12, "the large step size")
    small_lr: float = setting(0.012, "the constant small step size")
    steps: int = setting(1000, "SGD steps per run")
    log_points: int = setting(20, "train-loss points per run (also steps per compiled call = steps / log_points)")
    n: int = setting(15, "training examples")
    d: int = setting(2, "input dimension")
    teacher_width: int = setting(3, "ReLU neurons of the teacher")
    width: int = setting(20, "ReLU neurons of the student")
    n_test: int = setting(1000, "test examples")
    init_scale: float = setting(1.0, "student init: W ~ N(0, s^2 / d), a ~ N(0, s^2 / width)")


@dataclasses.dataclass
class ResNetSparsityConfig:
    dataset: str = setting("cifar10", "TFDS dataset (see msam resnet)")
    model: str = setting("resnet18", "network (see msam resnet)")
    data_dir: Optional[str] = setting(None, "TFDS data directory (the data must be prepared there)")
    epochs: int = setting(200, "epochs per run")
    lr: float = setting(0.05, "the large step size")
    small_lr: float = setting(0.002, "the constant small step size")
    decay_at: tuple[float, ...] = setting((0.1, 0.3, 0.5), "fractions p at which the large step is decayed")
    warmup: bool = setting(False, "exponential warm-up of the large step")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(5e-4, "lambda of 0.5 lambda ||w||^2")
    batch_size: int = setting(128, "global batch size")
    augment: bool = setting(True, "random crop and flip")
    rho: float = setting(0.0, "SAM radius; 0: plain SGD steps")
    seed: int = setting(0, "seed")
    threshold: float = setting(0.95, "feature sparsity: correlation above which a unit is a duplicate")
    max_units: int = setting(1000, "feature sparsity: units subsampled")
    sparsity_examples: int = setting(1000, "training images the sparsity is measured on")
    feature_layer: str = setting("final_relu", "layer whose activations are measured")
    steps_per_epoch: Optional[int] = setting(None, "cap on steps per epoch")
    out: str = setting(OUT, "directory for results.json, the plots and one run directory per schedule")
    json: bool = setting(False, "print the results as JSON on stdout")
    progress: bool = setting(True, "show the progress on stderr")

    def __post_init__(self):
        self.decay_at = tuple(float(p) for p in np.atleast_1d(self.decay_at))
        for p in self.decay_at:
            schedules.LargeStep(self.lr, 1000, decay_at=p, warmup=self.warmup)


def runs(config):
    """(label, p) of every run: the constant small step (p None), then the large step decayed at each p."""
    return [("constant", None)] + [(f"p={p:g}", p) for p in config.decay_at]


def make_schedule(config, p, total_steps):
    if p is None:
        return schedules.Constant(config.small_lr)
    return schedules.LargeStep(config.lr, total_steps, decay_at=p, warmup=config.warmup,
                               second_decay_at=config.second_decay_at, factor=config.factor,
                               warmup_rate=config.warmup_rate, warmup_end=config.warmup_end)


# ------------------------------------------------------------------------------------------ small tasks
def _half_mse(model, x, y):
    """mean (f(x) - y)^2 / 2 of the model's predictions: the train / test loss of the small tasks."""
    return float(np.mean((model.predict_on_batch(x).reshape(-1) - y) ** 2) / 2)


class DiagNetTask:
    """Sparse regression with a diagonal linear net (`recipes.tasks.diag_net`)."""

    metrics = ("beta_nnz",)

    def __init__(self, config):
        self.config = config
        x, y, x_test, y_test, self.beta_star = diag_net.make_data(config.n, config.d, config.r, config.n_test,
                                                                  config.seed)
        self.x, self.y = x.astype("float32"), y.astype("float32")
        self.x_test, self.y_test = x_test.astype("float32"), y_test.astype("float32")

    def make_model(self):
        return diag_net.make_model(self.config.d, self.config.alpha)

    def measure(self, model):
        u, v = diag_net.weights(model, dtype="float32")
        beta = u * v
        return {
            "train_loss": _half_mse(model, self.x, self.y),
            "test_loss": _half_mse(model, self.x_test, self.y_test),
            "beta_nnz": int(np.sum(np.abs(beta) > self.config.nnz_tol)),
            "beta": beta.tolist(),
        }


class _ReLUNetTask:
    """A two-layer ReLU net (`recipes.tasks.two_layer_relu`) initialised from NumPy."""

    metrics = ("feature_sparsity", "raw_sparsity", "jacobian_rank")

    def make_model(self):
        return two_layer_relu.make_model(self.x.shape[1], self.config.width, self.initial_weights())

    def measure(self, model):
        results = {
            "train_loss": _half_mse(model, self.x, self.y),
            "feature_sparsity": sparsity.feature_sparsity(model, "hidden", self.x),
            "raw_sparsity": sparsity.feature_sparsity(model, "hidden", self.x, raw=True),
            "jacobian_rank": sparsity.jacobian_rank(model, self.x),
        }
        if self.x_test is not None:
            results["test_loss"] = _half_mse(model, self.x_test, self.y_test)
        return results


class ReLU1DTask(_ReLUNetTask):
    """The 12-point 1D regression (`recipes.tasks.relu_1d`), init drawn from `np.random.default_rng(seed)`."""

    def __init__(self, config):
        self.config = config
        x, y = relu_1d.make_data()
        self.x, self.y = x.astype("float32"), y[:, 0].astype("float32")
        self.x_test = self.y_test = None

    def initial_weights(self):
        c = self.config
        return relu_1d.initial_weights(c.width, np.random.default_rng(c.seed), c.hidden_scale, c.bias_scale,
                                       c.output_scale)

    def measure(self, model):
        results = super().measure(model)
        grid = np.linspace(self.x.min() - 0.25, self.x.max() + 0.25, 400, dtype="float32")
        results["function"] = {"x": grid.tolist(), "f": model.predict_on_batch(grid[:, None]).reshape(-1).tolist()}
        return results


class TeacherStudentTask(_ReLUNetTask):
    """`recipes.tasks.teacher_student` with the "unit_sum" teacher; the student's init drawn with seed + 1."""

    def __init__(self, config):
        self.config = config
        self.x, self.y, self.x_test, self.y_test = teacher_student.make_data(
            config.n, config.d, config.teacher_width, config.n_test, config.seed, teacher="unit_sum")

    def initial_weights(self):
        c = self.config
        return teacher_student.initial_weights(c.d, c.width, c.init_scale, seed=c.seed + 1)


TASKS = {DiagNetsConfig: DiagNetTask, Relu1DConfig: ReLU1DTask, TeacherStudentConfig: TeacherStudentTask}


def train_small(task, config, p, progress=False, label=""):
    """Trains a fresh model of `task` with SGD under run p's schedule; returns (network, curve dict)
    with the full-batch train loss and the step size at step 0 and after every log interval."""
    keras.utils.set_random_seed(config.seed)
    per_interval, total = config.total_steps // config.log_points, config.total_steps
    net = task.make_model()
    # rho = 0: the plain Keras step, as the recipe's numbers were measured (SAMModel's ERM step is the same
    # step, but rounds differently in the last bit, which large-step SGD can amplify)
    model = SAMModel(net, rho=config.rho, m=1) if config.rho > 0 else net
    model.compile(optimizer=keras.optimizers.SGD(make_schedule(config, p, total), momentum=config.momentum),
                  loss=diag_net.half_squared_error)
    loop = runner.StepLoop(model, task.x, task.y[:, None], jit_compile=False)
    batches = runner.SAMPLINGS[config.sampling](len(task.y), total, config.batch_size, config.seed)

    def record(_):
        return {"train_loss": _half_mse(net, task.x, task.y), "lr": float(model.optimizer.learning_rate.numpy())}

    start = record(model)
    curve = loop.run(total, per_interval, batches, measure=record, progress=progress, desc=label)
    return net, {"step": [0] + curve["step"], "train_loss": [start["train_loss"]] + curve["train_loss"],
                 "lr": [start["lr"]] + curve["lr"]}


def run_small(config):
    task = TASKS[type(config)](config)
    results = []
    for label, p in runs(config):
        started = time.time()
        model, curve = train_small(task, config, p, config.progress, label)
        results.append({"label": label, "decay_at": p, "curve": curve, "metrics": task.measure(model),
                        "seconds": time.time() - started})
    return task.metrics, results


# ------------------------------------------------------------------------------------------ ResNet
def run_resnet(config):
    """ResNet-18 / CIFAR-10 through `recipes.resnet`, one run directory per schedule in `config.out`."""
    from keras_msam.models import get_model
    from recipes import resnet
    from recipes.tasks import images

    data = images.load(config.dataset, config.data_dir, download=False)  # clear error if absent
    x_probe = images.to_unit_range(data.x_train[: config.sparsity_examples]).numpy()
    results = []
    for label, p in runs(config):
        run_out = os.path.join(config.out, label.replace("=", ""))
        lr, schedule = (config.small_lr, "constant") if p is None else (config.lr, "largestep")
        run_config = resnet.ResNetConfig(
            dataset=config.dataset, data_dir=config.data_dir, download=False, augment=config.augment,
            model=config.model, rho=config.rho, epochs=config.epochs, batch_size=config.batch_size,
            lr=lr, momentum=config.momentum, wd=config.weight_decay, schedule=schedule,
            decay_at=p if p is not None else 0.5, warmup=config.warmup, out=run_out, seed=config.seed,
            steps_per_epoch=config.steps_per_epoch, verbose=outputs.fit_verbose() if config.progress else 0,
            sam_window=(0.0, 1.0) if config.rho > 0 else (1.0, 1.0),  # rho = 0: plain SGD steps, one pass
        )
        started = time.time()
        summary = resnet.train(run_config)
        net = get_model(config.model, data.num_classes, weight_decay=config.weight_decay)
        net.load_weights(os.path.join(run_out, "final.weights.h5"))
        history = summary.get("history") or []  # one dict per epoch
        kwargs = dict(threshold=config.threshold, max_units=config.max_units, seed=config.seed)
        metrics = {
            "train_loss": history[-1].get("loss") if history else None,
            "test_error": summary.get("test_error"),
            "test_loss": summary.get("test_loss"),
            "train_error": summary.get("train_error"),
            "feature_sparsity": sparsity.feature_sparsity(net, config.feature_layer, x_probe, **kwargs),
            "raw_sparsity": sparsity.feature_sparsity(net, config.feature_layer, x_probe, raw=True, **kwargs),
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


def write_outputs(summary, out):
    """results.json and the PNG plots of a summary in `out`; returns the list of files written."""
    name, results, metric_names = summary["experiment"], summary["runs"], summary["metrics"]
    plt, files = outputs.pyplot(), []

    def save(fig, filename):
        outputs.save_figure(fig, os.path.join(out, filename), dpi=110)
        files.append(filename)

    unit = "epoch" if "epochs" in summary["config"] else "step"
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
        ax.plot(relu_1d.X_DATA[:, 0], relu_1d.Y_DATA[:, 0], "ko", label="data")
        ax.legend(fontsize=8)
        ax.set_title(f"{name}: learned functions")
        save(fig, "functions.png")

    outputs.write_json(os.path.join(out, "results.json"), summary)
    files.append("results.json")
    return files


def table(summary):
    """A markdown table: one row per run, the train/test loss and the sparsity measures."""
    results = summary["runs"]
    keys = ["train_loss"] + [k for k in ("test_loss", "test_error") if any(k in r["metrics"] for r in results)]
    keys += list(summary["metrics"])
    lines = [f"| {summary['experiment']} run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in results:
        cells = []
        for key in keys:
            value = r["metrics"].get(key)
            cells.append("-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value))
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ entry points
def run(name, config):
    """Runs experiment `name` with `config`, writes its outputs into `config.out`, returns the summary."""
    if isinstance(config, ResNetSparsityConfig):
        metric_names, results = run_resnet(config)
    else:
        metric_names, results = run_small(config)
    summary = {"experiment": name, "config": config_lib.to_dict(config), "metrics": list(metric_names),
               "runs": results}
    write_outputs(summary, config.out)
    return summary


def run_experiment(name, variant=None, **overrides):
    """`run` on the config of experiment `name` (its defaults, then `variant`, then `overrides`)."""
    return run(name, config_lib.select(EXPERIMENTS, name, variant, **overrides))


def _main(name, config):
    summary = run(name, config)
    if config.json:
        outputs.print_json(summary)
    else:
        print(table(summary))
        print(f"results and plots in {config.out}")


def _experiment(name, config_class, help_text, variants=None, **defaults):
    return Experiment(functools.partial(_main, name), config_class, {"out": f"{OUT}/{name}", **defaults},
                      variants or {}, help=help_text)


EXPERIMENTS = {
    "diag_nets": _experiment("diag_nets", DiagNetsConfig, "diagonal net, n=80, d=200, r=20"),
    "diag_nets_small": _experiment("diag_nets_small", DiagNetsConfig, "diagonal net, n=40, d=100, r=20", n=40,
                                   d=100),
    "relu_1d": _experiment("relu_1d", Relu1DConfig, "12-point 1D regression, 1 -> 100 -> 1 ReLU net",
                           variants={"paper_init": dict(relu_1d.PAPER_INIT)}),
    "teacher_student": _experiment("teacher_student", TeacherStudentConfig,
                                   "3-neuron ReLU teacher, 20-neuron student, n=15, d=2"),
    "resnet18_cifar10": _experiment("resnet18_cifar10", ResNetSparsityConfig,
                                    "PreAct ResNet-18 on CIFAR-10 (TFDS data needed)"),
}
DEFAULT_EXPERIMENT = "diag_nets"

if __name__ == "__main__":
    from recipes import cli

    sys.exit(cli.main(["large_step_sgd", *sys.argv[1:]]))
