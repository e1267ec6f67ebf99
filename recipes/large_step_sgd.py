"""Recipe: "SGD with large step sizes learns sparse features" (Andriushchenko et al., ICML 2023).

Each experiment trains one initialisation several times, each run with its own step size, decayed once
at a fraction p of the steps (or never: a constant step), and records over training, as the papers'
figures show: the train (and test) loss, the Jacobian rank and the feature sparsity. The papers'
claims: a large step makes the train loss plateau (SGD bounces in a valley); while it does, the
features get sparser and the Jacobian rank lower; after the decay the loss drops, and the longer the
large-step phase, the sparser the solution and the better it generalises.

Experiments (`msam large_step_sgd EXPERIMENT [--variant NAME] [--field value ...]`); the defaults are
the papers' settings (the notebooks of tml-epfl/sgd-sparse-features; docs/fidelity.md):

- diag_nets (`DiagNetsConfig`, `diag_nets.ipynb` c1): a diagonal linear net <x, u * v> on sparse
  regression, n = 80, d = 200, r = 20, float64, 10^5 SGD steps: constant 0.25 vs 0.282 decayed once
  by 4.8 / 3.4 / 1.5 at 10 / 30 / 50 %. l0 = #{|u_i v_i| > 1e-50}, rank of [X_test[:2d] u, X_test[:2d] v].
  Variants `cpu`, `cpu_small`: our old short float32 settings (n = 80 / n = 40, d = 100).
- diag_nets_gd (c2): n = 40, d = 100; GD 2.0 constant, GD 3.53 decayed as above, SGD 0.272 / 20 at 50 %.
- relu_1d (`Relu1DConfig`, `fc_nets_1d_regression.ipynb`): the 12-point 1D regression, 1 -> 100 -> 1
  ReLU net, lr 2e-4 with a linear warm-up to 400 p times that, then decayed by 2.5 (p = 0.02) or 3.0
  (p = 0.5); feature sparsity at threshold 0.999, Jacobian rank on 300 uniform points.
- teacher_student (`TeacherStudentConfig`, `fc_nets_two_layer.ipynb`): unit-circle inputs (n = 15,
  d = 2), a 3-neuron teacher, a 20-neuron student without biases; constant 0.13 vs 0.455 decayed by
  2 / 4 / 5 at 10 / 30 / 50 %; rank on X_test[:60]. Variant `cpu`: our old setting.
- teacher_student_3layer (`ThreeLayerConfig`, `fc_nets_multi_layer.ipynb`): d = 5, n = 50, teacher
  5 -> 2 -> 2 -> 1, student 5 -> 10 -> 10 -> 1; constant 0.011 vs 0.04 with the warm-up
  0.04 (1 + 5 (t/T)^0.5) decayed by 3.5 / 2.5 / 5 at 10 / 30 / 50 %; rank on X_test[:181].
- resnet18_cifar10 (`ResNetSparsityConfig`, deep_nets/, the README's commands): ResNet-18 (`resnet18_plain`)
  on all 50k CIFAR-10 images, batch 256, 100 epochs; default the no-explicit-regularisation setting
  (momentum 0, no weight decay, no augmentation; lr_init 0.75 with the warm-up 1.05^(100 t/T) to p = 0.5
  vs a constant 0.01); variant `sota` (momentum 0.9, wd 5e-4, augmentation, lr 0.05 linear branch,
  p = 0.1 / 0.3 / 0.5 vs constant 0.002). Every 200 steps: feature sparsity of blocks 1-5 on 21 x 512
  training images, train loss on 1280 of them, the test loss and error.

The small tasks run in `runner.StepLoop` (XLA), each step on the examples the papers' NumPy stream
draws, measured on the papers' grid of iterations (`eval_steps`) and at the end. Outputs in --out:
results.json (settings, curves, final values), curves.png (every measure over the iterations, the
step size, and the decays as dashed lines), functions.png (relu_1d).

    msam large_step_sgd diag_nets --out runs/sparse/diag
    msam large_step_sgd teacher_student --seed 5 --json
"""

import dataclasses
import functools
import math
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
from recipes.tasks import diag_net, relu_1d, teacher_student, three_layer_relu, torch_inits, two_layer_relu

OUT = "results/large_step_sgd"
SAMPLINGS = ("randint", "choice", "with_replacement", "shuffled_epochs")
PER_RUN = ("lr", "decay_at", "decay", "warmup_factor", "batch_size")


# ------------------------------------------------------------------------------------------ configs
@dataclasses.dataclass
class SmallTaskConfig:
    """The runs and the SGD of the small tasks; `PER_RUN` fields hold one value per run (or one for all)."""

    lr: tuple[float, ...] = setting((0.25, 0.282, 0.282, 0.282), "step size of each run (gamma)")
    decay_at: tuple[float, ...] = setting((0.0, 0.1, 0.3, 0.5), "fraction p of the steps at which each run's "
                                                                "step is decayed (0: a constant step)")
    decay: tuple[float, ...] = setting((1.0, 4.8, 3.4, 1.5), "each run's step is divided by this at p")
    warmup_factor: tuple[float, ...] = setting((1.0,), "warm-up of each run: gamma (1 + (factor - 1) (t/T)^e) "
                                                      "until p (1: none)")
    warmup_exponent: float = setting(1.0, "e of the warm-up")
    second_decay_at: Optional[float] = setting(None, "fraction at which decayed runs are divided by their decay "
                                                     "once more (not in the papers; our old settings: 0.9)")
    batch_size: tuple[int, ...] = setting((1,), "examples per step of each run (0: all of them, GD)")
    momentum: float = setting(0.0, "SGD momentum")
    rho: float = setting(0.0, "SAM radius (m = 1); 0: plain SGD steps")
    steps: int = setting(100_001, "steps per run (T of the schedules)")
    seed: int = setting(1, "the notebook's seed: the order of the examples (and the init of the ReLU nets)")
    sampling: str = setting("randint", "which examples each step takes: randint = RandomState(seed).randint "
                                       "(diagonal nets), choice = a RandomState(seed).permutation(n)[:batch] a "
                                       "step (ReLU nets)", choices=SAMPLINGS)
    eval_first: int = setting(100, "measure before each of the first steps (the papers: 100)")
    eval_points: int = setting(250, "and at round(linspace(0, steps, points))[:-1], and after the last step")
    eval_at: tuple[int, ...] = setting((), "and after these steps")
    loss: str = setting("half_mse", "per-example loss: mse = (f - y)^2, half_mse = (f - y)^2 / 2",
                        choices=("mse", "half_mse"))
    dtype: str = setting("float64", "dtype of the model, the data and the step sizes", choices=("float32", "float64"))
    jit: bool = setting(True, "compile the step loop with XLA")
    out: str = setting(OUT, "directory for results.json and the plots")
    json: bool = setting(False, "print the results as JSON on stdout")
    progress: bool = setting(True, "show the progress on stderr")

    def __post_init__(self):
        for name in PER_RUN:
            setattr(self, name, tuple(np.atleast_1d(getattr(self, name)).tolist()))
        self.batch_size = tuple(int(b) for b in self.batch_size)
        lengths = {name: len(getattr(self, name)) for name in PER_RUN}
        count = max(lengths.values())
        if any(n not in (1, count) for n in lengths.values()):
            raise ValueError(f"lr, decay_at, decay, warmup_factor and batch_size take one value per run (or one "
                             f"for all runs); got {', '.join(f'{k}: {n}' for k, n in lengths.items())} values.")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive int; got steps={self.steps!r}.")
        if any(b < 0 for b in self.batch_size):
            raise ValueError(f"batch_size must be >= 1, or 0 for full batches (GD); got {self.batch_size}.")
        if self.rho < 0:
            raise ValueError(f"rho must be >= 0 (0: plain SGD); got rho={self.rho!r}.")
        if self.eval_first < 0 or self.eval_points < 2:
            raise ValueError(f"eval_first must be >= 0 and eval_points >= 2; got {self.eval_first}, {self.eval_points}.")
        self.eval_at = tuple(int(step) for step in self.eval_at)
        if any(not 0 <= step <= self.steps for step in self.eval_at):
            raise ValueError(f"eval_at must hold steps in [0, steps={self.steps}]; got {self.eval_at}.")
        for run in runs(self):  # the schedules check lr, decay_at, decay and the warm-up
            make_schedule(self, run)

    @property
    def total_steps(self):
        return self.steps


@dataclasses.dataclass
class DiagNetsConfig(SmallTaskConfig):
    n: int = setting(80, "training examples")
    d: int = setting(200, "input dimension")
    r: int = setting(20, "non-zero coordinates of the teacher beta*")
    n_test: int = setting(1000, "test examples")
    data_seed: int = setting(0, "seed of the data (the notebook's np.random.seed(0) draws)")
    alpha: float = setting(0.1, "init scale: u0 = alpha, v0 = 0")
    l0_tol: float = setting(1e-50, "l0 = #{|u_i v_i| > l0_tol}")
    rank_tol: float = setting(1e-15, "rank of [X_test[:2d] u, X_test[:2d] v]: #{s_i / s_1 > rank_tol}")

    def __post_init__(self):
        super().__post_init__()
        diag_net.check_sizes(self.n, self.d, self.r, self.n_test)
        if self.n_test < 2 * self.d:
            raise ValueError(f"n_test must be >= 2 d = {2 * self.d} (the rank is on X_test[:2d]); got {self.n_test}.")


@dataclasses.dataclass
class ReluNetConfig(SmallTaskConfig):
    """The ReLU nets' notebooks: a permutation of the examples per step, mean (f - y)^2, float32, 151
    measurement points."""

    sampling: str = setting("choice", "which examples each step takes (see diag_nets)", choices=SAMPLINGS)
    eval_points: int = setting(151, "and at round(linspace(0, steps, points))[:-1], and after the last step")
    loss: str = setting("mse", "per-example loss: mse = (f - y)^2, half_mse = (f - y)^2 / 2", choices=("mse", "half_mse"))
    dtype: str = setting("float32", "dtype of the model, the data and the step sizes", choices=("float32", "float64"))


@dataclasses.dataclass
class Relu1DConfig(ReluNetConfig):
    lr: tuple[float, ...] = setting((2e-4,), "step size of each run (gamma)")
    decay_at: tuple[float, ...] = setting((0.02, 0.5), "fraction p of the steps at which each run's step is "
                                                       "decayed (0: a constant step)")
    decay: tuple[float, ...] = setting((2.5, 3.0), "each run's step is divided by this at p")
    warmup_factor: tuple[float, ...] = setting((8.0, 200.0), "warm-up of each run: gamma (1 + (factor - 1) t/T) "
                                                            "until p (the notebook: 400 p)")
    steps: int = setting(31_623, "steps per run (T of the schedules)")
    seed: int = setting(3, "the notebook's seed: the init (3: the notebook's torch draw) and the example order")
    width: int = setting(100, "hidden units")
    hidden_scale: float = setting(2.5, "init: hidden weights +-hidden_scale")
    bias_scale: float = setting(2.5, "init: hidden biases N(0, bias_scale^2)")
    output_scale: float = setting(4.0, "init: output weights N(0, output_scale^2)")
    threshold: float = setting(0.999, "feature sparsity: correlation above which a unit is a duplicate")
    rank_points: int = setting(300, "Jacobian rank on this many uniform points in [min x, max x] (the papers: "
                                    "as many as parameters)")


@dataclasses.dataclass
class TeacherStudentConfig(ReluNetConfig):
    lr: tuple[float, ...] = setting((0.13, 0.455, 0.455, 0.455), "step size of each run (gamma)")
    decay: tuple[float, ...] = setting((1.0, 2.0, 4.0, 5.0), "each run's step is divided by this at p")
    steps: int = setting(14_126, "steps per run (T of the schedules)")
    seed: int = setting(0, "the notebook's seed: the student (0: the notebook's torch draw) and the example order")
    task: str = setting("papers", "papers: unit-circle inputs, +-1 teacher, student without biases; gaussian: our "
                                  "old task (Gaussian inputs, sum-of-ReLUs teacher, student with biases)",
                        choices=("papers", "gaussian"))
    n: int = setting(15, "training examples")
    d: int = setting(2, "input dimension")
    teacher_width: int = setting(3, "ReLU neurons of the teacher")
    width: int = setting(20, "ReLU neurons of the student")
    n_test: int = setting(1000, "test examples")
    data_seed: int = setting(0, "seed of the data (0: the notebook's inputs and torch teacher)")
    init_scale: float = setting(0.5, "student init: papers W = s N(0, 1), a = 0; gaussian W ~ N(0, s^2 / d), "
                                     "a ~ N(0, s^2 / width)")
    threshold: float = setting(0.99, "feature sparsity: correlation above which a unit is a duplicate")


@dataclasses.dataclass
class ThreeLayerConfig(ReluNetConfig):
    lr: tuple[float, ...] = setting((0.011, 0.04, 0.04, 0.04), "step size of each run (gamma)")
    decay: tuple[float, ...] = setting((1.0, 3.5, 2.5, 5.0), "each run's step is divided by this at p")
    warmup_factor: tuple[float, ...] = setting((6.0,), "warm-up of each run: gamma (1 + (factor - 1) (t/T)^e) "
                                                      "until p (1: none)")
    warmup_exponent: float = setting(0.5, "e of the warm-up")
    steps: int = setting(10_001, "steps per run (T of the schedules)")
    seed: int = setting(5, "the notebook's seed: the student (5: the notebook's torch draw) and the example order")
    n: int = setting(50, "training examples")
    d: int = setting(5, "input dimension")
    teacher_widths: tuple[int, int] = setting((2, 2), "hidden widths of the teacher")
    widths: tuple[int, int] = setting((10, 10), "hidden widths of the student")
    n_test: int = setting(1000, "test examples")
    data_seed: int = setting(5, "seed of the data (5: the notebook's inputs and torch teacher)")
    init_scale: float = setting(0.8, "student init: weights init_scale * N(0, 1)")
    threshold: float = setting(0.99, "feature sparsity: correlation above which a unit is a duplicate")


@dataclasses.dataclass(frozen=True)
class Run:
    lr: float
    decay_at: float
    decay: float
    warmup_factor: float
    batch_size: int

    def label(self):
        method = "GD" if self.batch_size == 0 else "SGD"
        text = f"{method} {self.lr:g}"
        if self.warmup_factor != 1 and self.decay_at > 0:
            text += f" warm-up x{self.warmup_factor:g}"
        return text + (f" /{self.decay:g} at {self.decay_at:g}" if self.decay_at > 0 and self.decay != 1 else "")


def runs(config):
    """The config's runs, one per position of its PER_RUN tuples."""
    count = max(len(getattr(config, name)) for name in PER_RUN)
    values = {name: getattr(config, name) * (count if len(getattr(config, name)) == 1 else 1) for name in PER_RUN}
    return [Run(*(values[name][k] for name in PER_RUN)) for k in range(count)]


def make_schedule(config, run):
    second = config.second_decay_at if run.decay_at > 0 else None
    return schedules.WarmupDecay(run.lr, config.total_steps, decay_at=run.decay_at, decay=run.decay,
                                 warmup_factor=run.warmup_factor, warmup_exponent=config.warmup_exponent,
                                 second_decay_at=second, dtype=config.dtype)


def eval_steps(steps, first=100, points=151, extra=()):
    """The papers' measuring grid (`utils.get_iters_eval`): 0, ..., first - 1, round(linspace(0, steps,
    points))[:-1], and `steps` (after the last step, which the papers do not measure), and `extra`."""
    grid = np.concatenate([np.arange(min(first, steps)), np.round(np.linspace(0, steps, points))[:-1], [steps],
                           np.asarray(extra, dtype=int)])
    return np.unique(grid.astype(int)).tolist()


# ------------------------------------------------------------------------------------------ sampling
def randint_order(n, steps, batch_size=1, seed=1):
    """[steps, batch]: the diagonal nets' `np.random.seed(seed)` then `np.random.randint(n)` every step."""
    return np.random.RandomState(seed).randint(0, n, size=(steps, batch_size)).astype(np.int32)


def choice_order(n, steps, batch_size=1, seed=0, rng=None):
    """[steps, batch]: the fc nets' `np.random.choice(n, batch, replace=False)` every step after
    `np.random.seed(seed)` (legacy NumPy: the first `batch` of a fresh permutation of n)."""
    rng = np.random.RandomState(seed) if rng is None else rng
    return np.stack([rng.permutation(n)[:batch_size] for _ in range(steps)]).astype(np.int32)


def example_order(config, n, batch_size, rng=None):
    """The example indices of every step of a run with `batch_size` examples a step (None: GD)."""
    if batch_size == 0:
        return None
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples.")
    if config.sampling == "randint":
        return randint_order(n, config.total_steps, batch_size, config.seed)
    if config.sampling == "choice":
        return choice_order(n, config.total_steps, batch_size, config.seed, rng)
    return runner.SAMPLINGS[config.sampling](n, config.total_steps, batch_size, config.seed)


# ------------------------------------------------------------------------------------------ tasks
class _Loss(keras.losses.Loss):
    """(f - y)^2 per example, halved for `half=True`; its dtype is the model's (a float64 loss for float64 nets)."""

    def __init__(self, half, dtype, name="squared_error"):
        super().__init__(name=name, dtype=dtype)
        self.half = half

    def call(self, y_true, y_pred):
        squared = keras.ops.mean(keras.ops.square(y_pred - y_true), axis=-1)
        return 0.5 * squared if self.half else squared

    def get_config(self):
        return {"half": self.half, "dtype": self.dtype, "name": self.name}


def _squared_error(model, x, y, half):
    """mean (f(x) - y)^2 (/ 2) in float64 from the model's predictions."""
    error = np.asarray(model.predict_on_batch(x), np.float64).reshape(-1) - y
    return float(np.mean(error**2) / (2 if half else 1))


class DiagNetTask:
    """Sparse regression with a diagonal linear net (`recipes.tasks.diag_net`), the papers' `diag_nets.py`."""

    def __init__(self, config):
        self.config = config
        x, y, x_test, y_test, self.beta_star = diag_net.make_data(config.n, config.d, config.r, config.n_test,
                                                                  config.data_seed)
        self.x, self.y = x.astype(config.dtype), y.astype(config.dtype)
        self.x_test, self.y_test = x_test.astype(config.dtype), y_test.astype(config.dtype)
        self.x_rank = x_test[: 2 * config.d]

    def make_model(self):
        c = self.config
        inputs = keras.Input(shape=(c.d,), dtype=c.dtype)
        model = keras.Model(inputs, diag_net.DiagonalLinear(c.alpha, name="diag", dtype=c.dtype)(inputs),
                            name="diag_net")
        # set in the model's dtype: the Constant initializer would round alpha to float32 first
        model.get_layer("diag").set_weights([np.full(c.d, c.alpha, c.dtype), np.zeros(c.d, c.dtype)])
        return model

    def order(self, batch_size):
        return example_order(self.config, len(self.y), batch_size)

    def measure(self, model):
        u, v = diag_net.weights(model, dtype="float64")
        beta = u * v
        half = self.config.loss == "half_mse"
        return {
            "train_loss": float(np.sum((self.x @ beta - self.y) ** 2) / (len(self.y) * (2 if half else 1))),
            "test_loss": float(np.sum((self.x_test @ beta - self.y_test) ** 2) / (len(self.y_test) * (2 if half else 1))),
            "l0": int(np.sum(np.abs(beta) > self.config.l0_tol)),
            "jacobian_rank": diag_jacobian_rank(self.x_rank, u, v, self.config.rank_tol)
            if np.all(np.isfinite(beta)) else None,
        }

    def final(self, model):
        u, v = diag_net.weights(model, dtype="float64")
        return {"beta": (u * v).tolist()}


def diag_jacobian_rank(x, u, v, rel_tol=1e-15):
    """Rank of the diagonal net's Jacobian on the points x, [x * v, x * u] (gradients w.r.t. u and v): the
    papers' `compute_grad_matrix_ranks` with rows [x * u, x * v] (the same columns)."""
    return sparsity.rank_of(np.hstack([x * u, x * v]), rel_tol)


class _ReLUNetTask:
    """A ReLU net of `two_layer_relu` / `three_layer_relu`: the papers' fc_nets measures."""

    feature_layers = ("hidden",)
    x_test = y_test = None

    def order(self, batch_size):
        self.rng = np.random.RandomState(self.config.seed)
        return example_order(self.config, len(self.y), batch_size, rng=self.rng)

    def features(self, model):
        """{layer: its activations on the training points}, through one sub-model per network."""
        if getattr(self, "_features_of", (None,))[0] is not model:
            extract = keras.Model(model.inputs[0], [model.get_layer(layer).output for layer in self.feature_layers])
            self._features_of = (model, extract)
        outputs = self._features_of[1](self.x, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return {layer: keras.ops.convert_to_numpy(out) for layer, out in zip(self.feature_layers, outputs)}

    def active_fraction(self, model, features):
        """The notebooks' `activation_frac_nonzeros`: the fraction of non-zero relu(x W + b) * a."""
        scale = model.get_layer("output").get_weights()[0][:, 0]
        return {"active_fraction": float(np.mean(features["hidden"] * scale != 0))}

    def measure(self, model):
        half = self.config.loss == "half_mse"
        results = {"train_loss": _squared_error(model, self.x, self.y, half)}
        if self.x_test is not None:
            results["test_loss"] = _squared_error(model, self.x_test, self.y_test, half)
        if not math.isfinite(results["train_loss"]):
            return results
        features = self.features(model)
        for layer, phi in features.items():
            key = "feature_sparsity" if len(features) == 1 else f"feature_sparsity/{layer}"
            results[key] = sparsity.sparsity_of_activations(phi, threshold=self.config.threshold)
        results.update(self.active_fraction(model, features))
        results["jacobian_rank"] = sparsity.jacobian_rank(model, self.rank_points)
        return results

    def final(self, model):
        return {}


class ReLU1DTask(_ReLUNetTask):
    """The 12-point 1D regression (`recipes.tasks.relu_1d`), the papers' `fc_nets_1d_regression.ipynb`."""

    def __init__(self, config):
        self.config = config
        x, y = relu_1d.make_data()
        self.x, self.y = x.astype("float32"), y[:, 0].astype("float32")

    def initial_weights(self):
        c = self.config
        if (c.seed, c.width, c.hidden_scale, c.bias_scale, c.output_scale) == (3, 100, 2.5, 2.5, 4.0):
            return [torch_inits.RELU_1D[k].copy() for k in ("W1", "b1", "W2")]
        return relu_1d.initial_weights(c.width, np.random.RandomState(c.seed), c.hidden_scale, c.bias_scale,
                                       c.output_scale)

    def make_model(self):
        return two_layer_relu.make_model(1, self.config.width, self.initial_weights(), name="relu_1d",
                                         dtype=self.config.dtype)

    def order(self, batch_size):
        order = super().order(batch_size)
        # The notebook draws its 300 rank points from the same stream after training:
        # np.random.uniform(X.min(), X.max(), n_params), X in float32.
        rng = self.rng if order is not None and self.config.sampling == "choice" else np.random.RandomState(self.config.seed)
        low, high = (float(np.float32(v)) for v in (self.x.min(), self.x.max()))
        self.rank_points = rng.uniform(low, high, self.config.rank_points)[:, None].astype("float32")
        return order

    def final(self, model):
        grid = np.linspace(self.x.min() - 0.05, self.x.max() + 0.05, 300, dtype="float32")
        return {"function": {"x": grid.tolist(), "f": model.predict_on_batch(grid[:, None]).reshape(-1).tolist()}}


class TeacherStudentTask(_ReLUNetTask):
    """Two-layer teacher-student (`recipes.tasks.teacher_student`), the papers' `fc_nets_two_layer.ipynb`."""

    def __init__(self, config):
        self.config = c = config
        if c.task == "papers":
            self.x, self.y, self.x_test, self.y_test, _ = teacher_student.papers_data(
                c.n, c.d, c.teacher_width, c.n_test, c.data_seed)
        else:
            self.x, self.y, self.x_test, self.y_test = teacher_student.make_data(
                c.n, c.d, c.teacher_width, c.n_test, c.data_seed, teacher="unit_sum")
        parameters = c.d * c.width + c.width + (c.width if c.task == "gaussian" else 0)
        if parameters > c.n_test:
            raise ValueError(f"the Jacobian rank takes X_test[:{parameters}] (one point per parameter); "
                             f"n_test={c.n_test} is too small.")
        self.rank_points = self.x_test[:parameters]

    def make_model(self):
        c = self.config
        if c.task == "papers":
            weights = teacher_student.papers_student(c.d, c.width, c.seed, c.init_scale)
            return two_layer_relu.make_model(c.d, c.width, weights, name="student", hidden_bias=False, dtype=c.dtype)
        weights = teacher_student.initial_weights(c.d, c.width, c.init_scale, seed=c.seed + 1)
        return two_layer_relu.make_model(c.d, c.width, weights, name="student", dtype=c.dtype)


class ThreeLayerTask(_ReLUNetTask):
    """Three-layer teacher-student (`recipes.tasks.three_layer_relu`), the papers' `fc_nets_multi_layer.ipynb`."""

    feature_layers = three_layer_relu.LAYERS[:2]

    def __init__(self, config):
        self.config = c = config
        self.x, self.y, self.x_test, self.y_test, _ = three_layer_relu.make_data(
            c.n, c.d, c.teacher_widths, c.n_test, c.data_seed)
        sizes = (c.d, *c.widths, 1)
        parameters = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
        if parameters > c.n_test:
            raise ValueError(f"the Jacobian rank takes X_test[:{parameters}]; n_test={c.n_test} is too small.")
        self.rank_points = self.x_test[:parameters]

    def make_model(self):
        c = self.config
        weights = three_layer_relu.initial_weights(c.d, c.widths, c.seed, c.init_scale)
        return three_layer_relu.make_model(c.d, c.widths, weights)

    def active_fraction(self, model, features):
        """The notebook's activation_frac_nonzeros_layer1 / _layer2 (no output scaling)."""
        return {f"active_fraction/{layer}": float(np.mean(phi != 0)) for layer, phi in features.items()}


TASKS = {DiagNetsConfig: DiagNetTask, Relu1DConfig: ReLU1DTask, TeacherStudentConfig: TeacherStudentTask,
         ThreeLayerConfig: ThreeLayerTask}


def train_small(task, config, run, progress=False):
    """Trains a fresh model of `task` under `run`; returns (network, curve): every measure of `task` and
    the step size at each step of `eval_steps`, until the end or the first non-finite train loss."""
    keras.utils.set_random_seed(config.seed)
    net = task.make_model()
    # rho = 0: the plain Keras step (SAMModel's ERM step is the same step, but rounds differently in the
    # last bit, which large-step SGD can amplify)
    model = SAMModel(net, rho=config.rho, m=1) if config.rho > 0 else net
    schedule = make_schedule(config, run)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=config.momentum),
                  loss=_Loss(config.loss == "half_mse", config.dtype))
    loop = runner.StepLoop(model, task.x, task.y[:, None], jit_compile=config.jit, dtype=config.dtype)
    order = task.order(run.batch_size)  # (the 1D task draws its rank points after the order, as the notebook)
    grid = eval_steps(config.total_steps, config.eval_first, config.eval_points, config.eval_at)

    def record(step):
        values = task.measure(net)
        values["lr"] = float(schedule(step))
        values["step"] = step
        for key, value in values.items():
            curve.setdefault(key, []).append(value)
        return values

    curve = {}
    record(0)
    done = 0
    for target in outputs.progress(grid[1:], run.label(), enabled=progress):
        gap = target - done
        loop.run(gap, gap, None if order is None else order[done:target])
        done = target
        if not math.isfinite(record(target)["train_loss"]):
            break
    return net, curve


def run_small(config):
    task = TASKS[type(config)](config)
    results = []
    for run in runs(config):
        started = time.time()
        net, curve = train_small(task, config, run, config.progress)
        last = {key: values[-1] for key, values in curve.items() if key not in ("step", "lr")}
        diverged = not math.isfinite(last["train_loss"])
        results.append({"label": run.label(), **dataclasses.asdict(run),
                        "decay_step": int(run.decay_at * config.total_steps) if run.decay_at > 0 else None,
                        "curve": curve, "metrics": last, "diverged_at": curve["step"][-1] if diverged else None,
                        **({} if diverged else task.final(net)), "seconds": time.time() - started})
    return results


# ------------------------------------------------------------------------------------------ ResNet
@dataclasses.dataclass
class ResNetSparsityConfig:
    """The README's commands; default the no-explicit-regularisation setting, `--variant sota` the other."""

    dataset: str = setting("cifar10", "TFDS dataset (see msam resnet)")
    model: str = setting("resnet18_plain", "network (see msam resnet)")
    width: Optional[int] = setting(None, "channels of the first stage (default: the model's, 64)")
    data_dir: Optional[str] = setting(None, "TFDS data directory (the data must be prepared there)")
    epochs: int = setting(100, "epochs per run")
    batch_size: int = setting(256, "global batch size")
    lr: float = setting(0.75, "lr_init of the large-step runs")
    small_lr: float = setting(0.01, "the constant small step size (the baseline run)")
    decay_at: tuple[float, ...] = setting((0.5,), "fractions p at which the large step is decayed (one run each)")
    warmup_exp: float = setting(1.05, "warm-up: lr * w^(100 t/T) (w > 1), lr * (1 + (100 t/T)^w) (w < 1), "
                                      "linear (w = 1)")
    warmup_factor: float = setting(1.0, "linear warm-up (warmup_exp 1): lr -> factor * lr at 50 %")
    momentum: float = setting(0.0, "SGD momentum")
    weight_decay: float = setting(0.0, "lambda of 0.5 lambda ||w||^2")
    augment: bool = setting(False, "random crop and flip")
    rho: float = setting(0.0, "SAM radius; 0: plain SGD steps")
    seed: int = setting(0, "seed")
    eval_every: int = setting(200, "measure every this many steps (and before the first)")
    threshold: float = setting(0.95, "feature sparsity: correlation above which a unit is a duplicate")
    max_units: int = setting(1000, "feature sparsity: units de-duplicated (a random subset)")
    sparsity_examples: int = setting(10_752, "the first this many training images (21 x 512) for the sparsity")
    train_eval_examples: int = setting(1280, "random training images for the train loss curve (5 x 256)")
    feature_layers: tuple[str, ...] = setting(("stage1", "stage2", "stage3", "stage4", "pool"),
                                              "layers measured (a stage name: its last layer), blocks 1-5")
    steps_per_epoch: Optional[int] = setting(None, "cap on steps per epoch")
    synthetic_size: tuple[int, int] = setting((1024, 256), "dataset synthetic: train, test examples",
                                              metavar=("TRAIN", "TEST"))
    out: str = setting(OUT, "directory for results.json, the plots and one run directory per schedule")
    json: bool = setting(False, "print the results as JSON on stdout")
    progress: bool = setting(True, "show the progress on stderr")

    def __post_init__(self):
        self.decay_at = tuple(float(p) for p in np.atleast_1d(self.decay_at))
        for p in self.decay_at:
            schedules.LargeStep(self.lr, 1000, decay_at=p, warmup_exp=self.warmup_exp, warmup_factor=self.warmup_factor)
        schedules.Constant(self.small_lr)
        for name in ("eval_every", "sparsity_examples", "train_eval_examples", "max_units"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int; got {name}={getattr(self, name)!r}.")


def resolve_layers(model, names):
    """Layer names of `model` for `names`: a layer's own name, or a prefix such as "stage2", which
    stands for the last layer whose name starts with "stage2_" (the output of that stage)."""
    layer_names = [layer.name for layer in model.layers]
    resolved = []
    for name in names:
        if name in layer_names:
            resolved.append(name)
            continue
        matches = [n for n in layer_names if n.startswith(name + "_")]
        if not matches:
            raise ValueError(f"feature layer {name!r} is neither a layer of {model.name!r} nor the prefix of one; "
                             f"its layers are {layer_names}.")
        resolved.append(matches[-1])
    return resolved


def _logits(model, x, batch_size=500):
    return np.concatenate([np.asarray(model.predict_on_batch(x[i : i + batch_size]))
                           for i in range(0, len(x), batch_size)])


def _loss_and_error(model, x, y):
    logits = _logits(model, x).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(y)), y].mean()), float(np.mean(np.argmax(logits, axis=1) != y))


def run_resnet(config):
    """One `recipes.resnet` run per schedule in `config.out/<label>`, measured every `eval_every` steps."""
    import tensorflow as tf

    from keras_msam.models import get_model
    from recipes import resnet
    from recipes.tasks import images

    data = images.load(config.dataset, config.data_dir, val_fraction=0.0, download=False,
                       synthetic_size=tuple(config.synthetic_size), seed=config.seed)
    x_probe = images.to_unit_range(data.x_train[: config.sparsity_examples]).numpy()
    x_test = images.to_unit_range(data.x_test).numpy()
    layers = resolve_layers(get_model(config.model, data.num_classes, config.width), config.feature_layers)
    results = []
    for label, p in [("constant", None)] + [(f"p={p:g}", p) for p in config.decay_at]:
        run_out = os.path.join(config.out, label.replace("=", ""))
        lr, schedule = (config.small_lr, "constant") if p is None else (config.lr, "largestep")
        run_config = resnet.ResNetConfig(
            dataset=config.dataset, data_dir=config.data_dir, download=False, val_fraction=0.0,
            augment=config.augment, synthetic_size=tuple(config.synthetic_size), model=config.model,
            width=config.width, rho=config.rho, epochs=config.epochs, batch_size=config.batch_size, lr=lr,
            momentum=config.momentum, wd=config.weight_decay, schedule=schedule,
            decay_at=p if p is not None else 0.5, warmup_exp=config.warmup_exp, warmup_factor=config.warmup_factor,
            out=run_out, seed=config.seed, steps_per_epoch=config.steps_per_epoch,
            verbose=outputs.fit_verbose() if config.progress else 0,
            sam_window=(0.0, 1.0) if config.rho > 0 else (1.0, 1.0),  # rho = 0: plain SGD steps, one pass
        )
        evaluations = []

        def evaluate(model):
            # train loss on random training images (augmented when training is), in inference mode, and
            # the test loss and error, as the papers' eval every 200 iterations
            rng = np.random.RandomState(config.seed + len(evaluations))
            pick = rng.choice(len(data.y_train), min(config.train_eval_examples, len(data.y_train)), replace=False)
            x = images.to_unit_range(data.x_train[pick])
            if config.augment:  # each image's own seed: [index, seed + evaluation]
                seeds = tf.stack([tf.range(len(pick), dtype=tf.int64),
                                  tf.fill([len(pick)], tf.constant(config.seed + len(evaluations), tf.int64))], axis=1)
                x = tf.map_fn(lambda image_seed: images.augment(*image_seed), (x, seeds), fn_output_signature=tf.float32)
            train_loss, train_error = _loss_and_error(model, np.asarray(x), data.y_train[pick])
            test_loss, test_error = _loss_and_error(model, x_test, data.y_test)
            evaluations.append(1)
            return {"train_loss": train_loss, "train_error": train_error, "test_loss": test_loss,
                    "test_error": test_error}

        logger = sparsity.SparsityLogger(x_probe, layers, config.eval_every, threshold=config.threshold,
                                         max_units=config.max_units, rank=False, row_normalize=False,
                                         seed=config.seed, extra=evaluate)
        started = time.time()
        summary = resnet.train(run_config, callbacks=[logger])
        lr_schedule = resnet.make_schedule(run_config, summary["optimizer_steps"])
        curve = {"step": [h["step"] for h in logger.history],
                 "lr": [float(lr_schedule(h["step"])) for h in logger.history]}
        for key in logger.history[0]:
            if key != "step":
                curve[key] = [h[key] for h in logger.history]
        metrics = {key: values[-1] for key, values in curve.items() if key not in ("step", "lr")}
        metrics.update({f"final_{k}": summary.get(k) for k in ("test_error", "test_loss", "train_error", "train_loss")})
        total = summary["optimizer_steps"]
        results.append({"label": label, "lr": lr, "decay_at": p, "decay_step": int(p * total) if p else None,
                        "curve": curve, "metrics": metrics, "diverged_at": None, "seconds": time.time() - started})
    return results


# ------------------------------------------------------------------------------------------ outputs
def _metric_keys(results):
    keys = []
    for r in results:
        keys += [k for k in r["curve"] if k not in ("step", "lr") and k not in keys]
    return keys


def write_outputs(summary, out):
    """results.json and the PNG plots of a summary in `out`; returns the list of files written."""
    name, results = summary["experiment"], summary["runs"]
    plt, files = outputs.pyplot(), []

    def save(fig, filename):
        outputs.save_figure(fig, os.path.join(out, filename), dpi=100)
        files.append(filename)

    keys = [k for k in _metric_keys(results) if not k.startswith("raw/")] + ["lr"]
    columns = len(keys) if len(keys) <= 5 else math.ceil(len(keys) / 2)
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, keys):
        for k, r in enumerate(results):
            values = [outputs.finite_or_nan(v) for v in r["curve"].get(key, [])]
            if values:
                ax.plot(r["curve"]["step"][: len(values)], values, color=colors[k % len(colors)], label=r["label"], lw=1.2)
            if r.get("decay_step") and key != "lr":
                ax.axvline(r["decay_step"], color=colors[k % len(colors)], ls="--", lw=0.8)
        if "loss" in key or key == "lr":
            ax.set_yscale("log")
        ax.set_title(key.replace("_", " "), fontsize=10)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{name}: the loss plateaus at the large step and drops after the decay (dashed)", fontsize=11)
    save(fig, "curves.png")

    if all("function" in r for r in results):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in results:
            ax.plot(r["function"]["x"], r["function"]["f"], label=r["label"])
        ax.plot(relu_1d.X_DATA[:, 0], relu_1d.Y_DATA[:, 0], "ko", label="data")
        ax.legend(fontsize=8)
        ax.set_title(f"{name}: learned functions")
        save(fig, "functions.png")

    outputs.write_json(os.path.join(out, "results.json"), summary)
    files.append("results.json")
    return files


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def table(summary):
    """A markdown table: one row per run, the final value of every measure (or where it diverged)."""
    results = summary["runs"]
    keys = [k for k in _metric_keys(results) if not k.startswith("raw/")]
    keys += [k for k in results[0]["metrics"] if k.startswith("final_")] if results else []
    lines = [f"| {summary['experiment']} run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in results:
        if r.get("diverged_at") is not None:
            cells = [f"diverged (step {r['diverged_at']})"] + ["-"] * (len(keys) - 1)
        else:
            cells = [_cell(r["metrics"].get(key)) for key in keys]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ entry points
def run(name, config):
    """Runs experiment `name` with `config`, writes its outputs into `config.out`, returns the summary."""
    started = time.time()
    results = run_resnet(config) if isinstance(config, ResNetSparsityConfig) else run_small(config)
    summary = {"experiment": name, "config": config_lib.to_dict(config), "runs": results,
               "seconds": time.time() - started}
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
        print(f"{summary['seconds']:.0f} s; results and plots in {config.out}")


def _experiment(name, config_class, help_text, variants=None, **defaults):
    return Experiment(functools.partial(_main, name), config_class, {"out": f"{OUT}/{name}", **defaults},
                      variants or {}, help=help_text)


# Our old settings (before the papers' became the defaults): 4000 steps in float32, shuffled epochs, a
# constant small step vs a large one divided by 10 at p and again at 90 %, l0 at 1e-2.
_OLD_DIAG = dict(lr=(0.022, 0.22, 0.22, 0.22), decay_at=(0.0, 0.1, 0.3, 0.5), decay=(1.0, 10.0, 10.0, 10.0),
                 second_decay_at=0.9, steps=4000, seed=0, sampling="shuffled_epochs", eval_first=0, eval_points=51,
                 dtype="float32", jit=False, l0_tol=1e-2)
_OLD_TEACHER_STUDENT = dict(task="gaussian", lr=(0.012, 0.12, 0.12, 0.12), decay=(1.0, 10.0, 10.0, 10.0),
                            second_decay_at=0.9, steps=1000, sampling="shuffled_epochs", eval_first=0,
                            eval_points=21, loss="half_mse", init_scale=1.0, jit=False)

EXPERIMENTS = {
    "diag_nets": _experiment("diag_nets", DiagNetsConfig, "diagonal net, n=80, d=200, r=20, 10^5 SGD steps (float64)",
                             variants={"cpu": _OLD_DIAG, "cpu_small": {**_OLD_DIAG, "n": 40, "d": 100}}),
    "diag_nets_gd": _experiment("diag_nets_gd", DiagNetsConfig, "diagonal net, n=40, d=100: GD 2.0, GD 3.53 decayed, "
                                "SGD 0.272 /20", n=40, d=100, lr=(2.0, 3.53, 3.53, 3.53, 0.272),
                                decay_at=(0.0, 0.1, 0.3, 0.5, 0.5), decay=(1.0, 4.8, 3.4, 1.5, 20.0),
                                batch_size=(0, 0, 0, 0, 1)),
    "relu_1d": _experiment("relu_1d", Relu1DConfig, "12-point 1D regression, 1 -> 100 -> 1 ReLU net"),
    "teacher_student": _experiment("teacher_student", TeacherStudentConfig,
                                   "2-layer teacher-student, n=15, d=2, teacher 3, student 20",
                                   variants={"cpu": _OLD_TEACHER_STUDENT}),
    "teacher_student_3layer": _experiment("teacher_student_3layer", ThreeLayerConfig,
                                          "3-layer teacher-student, n=50, d=5, teacher 2-2, student 10-10"),
    "resnet18_cifar10": _experiment("resnet18_cifar10", ResNetSparsityConfig,
                                    "ResNet-18 on CIFAR-10 (TFDS data needed): no explicit regularisation",
                                    variants={"sota": dict(lr=0.05, small_lr=0.002, warmup_exp=1.0,
                                                           decay_at=(0.1, 0.3, 0.5), momentum=0.9,
                                                           weight_decay=5e-4, augment=True)}),
}
DEFAULT_EXPERIMENT = "diag_nets"

if __name__ == "__main__":
    from recipes import cli

    sys.exit(cli.main(["large_step_sgd", *sys.argv[1:]]))
