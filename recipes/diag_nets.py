"""Diagonal linear networks f(x) = <x, u * v> trained by ERM, SGD, n-SAM and 1-SAM through `SAMModel`.

The sparse-regression setting of Andriushchenko & Flammarion (2022), "Towards Understanding
Sharpness-Aware Minimization" (`recipes.tasks.diag_net`): n = 20 Gaussian inputs in d = 30 dimensions,
a 3-sparse unit-norm teacher, no label noise, init u0 = alpha, v0 = 0, loss ||X(u * v) - y||^2 / (2n),
step gamma = lr_c / d, 10^4 + 1 steps (the notebook's num_iter). Weights, data and loss are float64 by
default, as in the papers' NumPy code (`--dtype float32` for single precision): at the edge of stability
(gamma = 15/d, rho = 0.3) only float64 converges.

rho convention (the papers' code, so their rho grids mean the same here):
- n-SAM ascends by rho * grad L with L = ||Xb - y||^2 / (2n): SAMModel rho = rho.
- 1-SAM ascends per example by rho * grad(r_k^2); SAMModel's per-example loss is r_k^2 / 2, so the
  unnormalized SAMModel rho is 2 * rho (normalized ascent: the factor cancels, SAMModel rho = rho).

Every method is one `SAMModel` (ERM and SGD with SAM switched off) in one `runner.StepLoop`, compiled
once per method and reused across rhos and restarts (`Trainer`). The papers' notebook
(tml-epfl/understanding-sam, diagonal_linear_nets/diag_nets_sam.ipynb) sets the defaults; where ours
differ, docs/fidelity.md says why.

Experiments: `EXPERIMENTS` at the end (`msam diag_nets --help`); each has a config class holding its
defaults (`RunConfig`, `RhoGridConfig`, `SwitchConfig`, `InterpolationConfig`, `ImplicitBiasConfig`).
"""

import contextlib
import dataclasses
import math
import sys
import time
from typing import Optional

import keras
import numpy as np

from keras_msam import SAMModel
from recipes import implicit_bias, outputs, runner
from recipes.config import Experiment, setting
from recipes.tasks import diag_net

METHODS = ("erm", "gd", "sgd", "n-sam", "1-sam")
SAM_METHODS = ("n-sam", "1-sam")
RHO_GRID = (0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.9)
PAPERS_RHOS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.9)  # the notebook's grid (cell 4), a subset of RHO_GRID
DTYPES = ("float64", "float32")
DEFAULT_RHO = {"erm": 0.0, "gd": 0.0, "sgd": 0.0, "n-sam": 0.1, "1-sam": 0.3}
OUT = "results/diag_nets"


# ----------------------------------------------------------------------------------------- configs
@dataclasses.dataclass
class DiagNetConfig:
    """Data, model and step size: the settings every experiment shares."""

    n: int = setting(20, "training examples")
    d: int = setting(30, "input dimension")
    r: int = setting(3, "non-zero coordinates of the teacher beta*")
    n_test: int = setting(1000, "test examples")
    data_seed: int = setting(0, "seed of the data (the papers' NumPy global-seed stream)")
    alpha: float = setting(0.1, "init scale: u0 = alpha, v0 = 0")
    lr_c: float = setting(15.0, "step size gamma = lr_c / d")
    steps: int = setting(10_001, "steps per run (per phase for switch and interpolation; the notebook's "
                                 "num_iter = 10^4 + 1)")
    dtype: str = setting("float64", "precision of the weights, data and loss (float64: the papers' NumPy code)",
                         choices=DTYPES)
    normalize: bool = setting(False, "normalized ascent rho g / ||g|| (otherwise rho g, the papers' theory)")
    chunk: Optional[int] = setting(None, "steps per compiled call, also the spacing of the loss curves "
                                         "(default: steps / 100 or less)")
    json: bool = setting(False, "print the result as JSON on the last line")
    progress: bool = setting(True, "show the progress on stderr")

    def __post_init__(self):
        diag_net.check_sizes(self.n, self.d, self.r, self.n_test)
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0 (init scale u0 = alpha); got alpha={self.alpha!r}.")
        if not self.lr_c > 0:
            raise ValueError(f"lr_c must be > 0 (the step size gamma = lr_c / d); got lr_c={self.lr_c!r}.")
        _check_dtype(self.dtype)
        runner.check_steps(self.steps, self.chunk)

    def data(self):
        return diag_net.make_data(self.n, self.d, self.r, self.n_test, self.data_seed)


@dataclasses.dataclass
class RunConfig(DiagNetConfig):
    method: str = setting("1-sam", "erm / gd (full batch), sgd (batch 1), n-sam (m = n), 1-sam (m = 1)",
                          choices=METHODS)
    rho: Optional[float] = setting(None, "ascent radius in the papers' convention (default per method: "
                                         + ", ".join(f"{k} {v}" for k, v in DEFAULT_RHO.items()) + ")")
    seed: int = setting(0, "seed of SGD's example draws")
    progress: bool = setting(False, "show the progress over the steps on stderr")

    def __post_init__(self):
        super().__post_init__()
        if self.rho is None:
            self.rho = DEFAULT_RHO[_check_method(self.method)]
        sam_settings(self.method, self.rho, self.normalize)


@dataclasses.dataclass
class RhoGridConfig(DiagNetConfig):
    rhos: tuple[float, ...] = setting(RHO_GRID, "the rho grid (papers' convention)")
    out: str = setting(OUT, "output directory")

    def __post_init__(self):
        super().__post_init__()
        for rho in self.rhos:
            sam_settings("1-sam", rho, self.normalize)


@dataclasses.dataclass
class SwitchConfig(DiagNetConfig):
    """The notebook's cell 5: gamma = 1/d, unnormalized 1-SAM with rho = 10 after ERM, rho = 0.175 before it."""

    lr_c: float = setting(1.0, "step size gamma = lr_c / d")
    rho_erm_sam: float = setting(10.0, "1-SAM's rho in ERM -> 1-SAM (papers' convention)")
    rho_sam_erm: float = setting(0.175, "1-SAM's rho in 1-SAM -> ERM and in the 1-SAM-only run (papers' convention)")
    out: str = setting(OUT, "output directory")

    def __post_init__(self):
        super().__post_init__()
        for rho in (self.rho_erm_sam, self.rho_sam_erm):
            sam_settings("1-sam", rho, self.normalize)


@dataclasses.dataclass
class InterpolationConfig(DiagNetConfig):
    """The notebook's cell 7: w(a) = (1 - a) w_ERM->1-SAM + a w_ERM (u and v), 100 points on [-1, 2]."""

    lr_c: float = setting(1.0, "step size gamma = lr_c / d")
    rho: float = setting(10.0, "1-SAM's rho in ERM -> 1-SAM, the a = 0 end (papers' convention)")
    points: int = setting(100, "points on the segment")
    a_range: tuple[float, float] = setting((-1.0, 2.0), "first and last a (0: ERM -> 1-SAM, 1: ERM)")
    out: str = setting(OUT, "output directory")

    def __post_init__(self):
        super().__post_init__()
        sam_settings("1-sam", self.rho, self.normalize)
        if not isinstance(self.points, int) or self.points < 2:
            raise ValueError(f"points must be an int >= 2; got points={self.points!r}.")
        if len(self.a_range) != 2 or not self.a_range[0] < self.a_range[1]:
            raise ValueError(f"a_range must be two increasing numbers (first, last a); got a_range={self.a_range!r}.")


@dataclasses.dataclass
class ImplicitBiasConfig(DiagNetConfig):
    """Small steps (gamma = 1 / d), small rho, the unnormalized ascent and runs long enough to interpolate:
    the assumptions of the papers' Theorem 1 (gradient flow, first order in rho, global convergence)."""

    lr_c: float = setting(1.0, "step size gamma = lr_c / d")
    steps: int = setting(100_000, "steps per run (ERM's train loss falls to ~2e-11)")
    rho: float = setting(0.1, "rho of n-SAM and 1-SAM (papers' convention)")
    out: str = setting(OUT, "output directory")

    def __post_init__(self):
        super().__post_init__()
        sam_settings("1-sam", self.rho, self.normalize)


# ----------------------------------------------------------------------------------------- training
def _check_dtype(dtype):
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got dtype={dtype!r}.")
    return dtype


@contextlib.contextmanager
def _keras_floatx(dtype):
    """Keras' floatx set to `dtype` inside the block: what `compile` creates then (the compiled loss, which
    casts every loss to its dtype, the learning-rate variable, the metrics) is in `dtype`. The global
    dtype policy of layers is fixed first, so that layers made elsewhere keep theirs."""
    keras.config.dtype_policy()
    previous = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(repr(m) for m in METHODS)}; got method={method!r}.")
    return method


def sam_settings(method, rho, normalize):
    """(m, SAMModel rho, SAM on?) for a method, with the papers' rho convention (see the module doc)."""
    method = _check_method(method)
    if rho is None or not float(rho) >= 0:
        raise ValueError(f"rho must be a float >= 0; got rho={rho!r}.")
    if method not in SAM_METHODS:
        if rho:
            raise ValueError(f"rho applies to 'n-sam' and '1-sam' only; method={method!r} needs rho=0 (got rho={rho}).")
        return None, 0.0, False
    if method == "n-sam":
        return None, float(rho), True
    return 1, float(rho) * (1.0 if normalize else 2.0), True


class Trainer:
    """One compiled SAMModel for one method; `train` runs it from any (u, v), rho and SAM setting.

    The SAMModel steps inside one `runner.StepLoop` (XLA, except for SGD: XLA compiles its batch-1
    gather loop very slowly on CPU), reused across rhos and restarts (rho is a variable of SAMModel);
    SAM on and off are one trace each. 1-SAM's 20 shards run as one vectorized pass. `dtype` is that of
    the weights, the data, the loss and the learning rate (SAMModel holds rho and the shard weights m / b in
    float64, so a float64 run takes the papers' float64 steps; docs/fidelity.md).
    """

    def __init__(self, method, lr, data, alpha=0.1, normalize=False, jit_compile=None, dtype="float64"):
        self.method = _check_method(method)
        if not lr > 0:
            raise ValueError(f"lr must be > 0 (the step size gamma = c / d); got lr={lr!r}.")
        self.dtype = _check_dtype(dtype)
        self.X, self.y, self.X_test, self.y_test = (np.asarray(a, dtype=np.float64) for a in data[:4])
        self.n, self.d = self.X.shape
        self.alpha, self.normalize, self.lr = float(alpha), bool(normalize), float(lr)
        m, _, sam_on = sam_settings(self.method, 0.0, normalize)
        self.shard_size = (self.n if m is None else m) if sam_on else None  # examples per SAM shard
        self.model = SAMModel(diag_net.make_model(self.d, self.alpha, dtype=dtype), rho=0.0, m=m, normalize=normalize,
                              sam_enabled=sam_on, shards_per_pass=None)
        jit_compile = self.method != "sgd" if jit_compile is None else jit_compile
        with _keras_floatx(dtype):
            self.model.compile(optimizer=keras.optimizers.SGD(learning_rate=self.lr), loss=diag_net.half_squared_error)
            self.loop = runner.StepLoop(self.model, self.X, self.y[:, None], jit_compile=jit_compile, dtype=dtype)
        self.rho = self.model_rho = 0.0

    def set_lr(self, lr):
        """Sets the step size gamma (a variable of the compiled model: no recompiling)."""
        if not lr > 0:
            raise ValueError(f"lr must be > 0 (the step size gamma = c / d); got lr={lr!r}.")
        self.lr = float(lr)
        self.model.optimizer.learning_rate.assign(self.lr)

    def set_rho(self, rho):
        """Sets the ascent radius from a papers'-convention rho (and SAM on/off for SAM methods)."""
        _, model_rho, sam_on = sam_settings(self.method, rho, self.normalize)
        self.rho, self.model_rho = float(rho), model_rho
        self.model.rho = model_rho
        self.model.sam_enabled = sam_on and model_rho > 0

    def weights(self):
        return diag_net.weights(self.model.inner)

    def reset(self, init=None):
        """Back to u0 = alpha, v0 = 0 (or to the given (u, v))."""
        u, v = (np.full(self.d, self.alpha), np.zeros(self.d)) if init is None else init
        self.model.inner.set_weights([np.asarray(u, self.dtype), np.asarray(v, self.dtype)])

    def train(self, steps, chunk=None, seed=0, progress=False):
        """`steps` more steps from the current weights; returns the curve {"steps", "train_loss", "test_loss"}
        after every chunk (shorter when the loss stops being finite)."""
        chunk = runner.chunk_for(steps, chunk)
        # SGD: one example a step, drawn with replacement (as the papers' code); the others: the full batch
        batches = runner.with_replacement(self.n, steps, 1, seed) if self.method == "sgd" else None
        curve = self.loop.run(steps, chunk, batches, measure=lambda model: self.evaluate(), progress=progress,
                              desc=f"{self.method} steps/{chunk}")
        return {"steps": curve["step"], "train_loss": curve["train_loss"], "test_loss": curve["test_loss"]}

    def evaluate(self):
        u, v = self.weights()
        beta = u * v
        with np.errstate(all="ignore"):
            return {"train_loss": diag_net.loss(self.X, self.y, beta),
                    "test_loss": diag_net.loss(self.X_test, self.y_test, beta)}


def train_run(trainer, rho, steps, chunk=None, seed=0, init=None, progress=False):
    """One run of `trainer`'s method at `rho` (papers' convention) from init (default u0 = alpha, v0 = 0);
    returns a JSON-ready dict: method, rho, rho_model, m, batch_size, normalize, lr, steps, alpha, seed,
    dtype, train_loss, test_loss, diverged, beta (= u * v), u, v, curve (steps, train_loss, test_loss),
    seconds."""
    chunk = runner.chunk_for(steps, chunk)
    trainer.reset(init)
    trainer.set_rho(rho)
    start = time.perf_counter()
    curve = trainer.train(steps, chunk, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    u, v = trainer.weights()
    final = trainer.evaluate()
    return {
        "method": trainer.method,
        "rho": float(rho),
        "rho_model": trainer.model_rho,
        "m": trainer.shard_size,  # examples per SAM shard (None: no ascent)
        "batch_size": 1 if trainer.method == "sgd" else trainer.n,
        "normalize": trainer.normalize,
        "lr": trainer.lr,
        "steps": int(steps),
        "alpha": trainer.alpha,
        "seed": int(seed),
        "dtype": trainer.dtype,
        **final,
        "diverged": not (math.isfinite(final["train_loss"]) and len(curve["steps"]) * chunk == steps),
        "beta": (u * v).tolist(),
        "u": u.tolist(),
        "v": v.tolist(),
        "curve": curve,
        "seconds": seconds,
    }


def run(config, data=None, trainer=None, init=None):
    """Experiment "run": trains the diagonal net with `config.method` (a `RunConfig`); see `train_run`.

    `data` (as from `config.data()`) and `trainer` (a `Trainer` of this method, reused without
    recompiling; its lr, alpha and normalize win) save work when called many times.
    """
    if trainer is None:
        data = config.data() if data is None else data
        trainer = Trainer(config.method, config.lr_c / config.d, data, config.alpha, config.normalize,
                          dtype=config.dtype)
    elif trainer.method != config.method:
        raise ValueError(f"trainer was built for method={trainer.method!r}, not method={config.method!r}.")
    return train_run(trainer, config.rho, config.steps, config.chunk, config.seed, init, config.progress)


# ----------------------------------------------------------------------------------------- experiments
def rho_grid(config):
    """Test loss of ERM, n-SAM and 1-SAM over `config.rhos`; writes rho_grid.{json,csv,png} into config.out."""
    data = config.data()
    lr = config.lr_c / config.d
    trainers = {m: Trainer(m, lr, data, config.alpha, config.normalize, dtype=config.dtype)
                for m in ("erm", "n-sam", "1-sam")}
    jobs = [("erm", 0.0)] + [(m, r) for r in config.rhos for m in SAM_METHODS]
    results = {"erm": None, "n-sam": [], "1-sam": []}
    for method, rho in outputs.progress(jobs, "rho grid", config.progress):
        res = _brief(train_run(trainers[method], rho, config.steps, config.chunk))
        if method == "erm":
            results["erm"] = res
        else:
            results[method].append(res)
    summary = {
        "experiment": "rho_grid",
        "settings": {"lr_c": config.lr_c, "lr": lr, "steps": config.steps, "alpha": config.alpha,
                     "normalize": config.normalize, "dtype": config.dtype, "rhos": list(config.rhos)},
        **results,
    }
    outputs.write_json(f"{config.out}/rho_grid.json", summary)
    outputs.write_csv(
        f"{config.out}/rho_grid.csv",
        ("rho", "erm_test", "n_sam_test", "one_sam_test", "n_sam_train", "one_sam_train"),
        [(n_sam["rho"], results["erm"]["test_loss"], n_sam["test_loss"], one_sam["test_loss"], n_sam["train_loss"],
          one_sam["train_loss"]) for n_sam, one_sam in zip(results["n-sam"], results["1-sam"])],
    )
    plt = outputs.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.axhline(results["erm"]["test_loss"], color="red", label="ERM (GD)")
    for method, color, label in (("n-sam", "tab:blue", "n-SAM"), ("1-sam", "tab:green", "1-SAM")):
        xs = [r["rho"] for r in results[method]]
        ys = [outputs.finite_or_nan(r["test_loss"]) for r in results[method]]
        ax.plot(xs, ys, "o-", color=color, label=label)
        diverged = [x for x, y in zip(xs, ys) if not np.isfinite(y)]
        ax.plot(diverged, [1.0] * len(diverged), "x", ms=9, mew=2, color=color, transform=ax.get_xaxis_transform(),
                clip_on=False, label=f"{label} diverged" if diverged else None)
    ax.set(xscale="log", yscale="log", xlabel=r"$\rho$", ylabel="test loss",
           title=f"Diagonal net, $\\gamma = {config.lr_c:g}/d$, {config.steps} steps, {config.dtype}")
    ax.legend()
    outputs.save_figure(fig, f"{config.out}/rho_grid.png")
    return summary


def switch(config):
    """ERM, 1-SAM, ERM -> 1-SAM and 1-SAM -> ERM, switched after `steps`; writes switch.{json,csv,png}.

    The notebook's cell 5: ERM -> 1-SAM ascends with rho_erm_sam, 1-SAM -> ERM with rho_sam_erm, ERM is
    GD for 2 x steps; the 1-SAM-only run (rho_sam_erm for 2 x steps) is ours. All runs share one m = 1
    SAMModel; the switch is `sam_enabled` (one trace for each setting).
    """
    data = config.data()
    trainer = Trainer("1-sam", config.lr_c / config.d, data, config.alpha, config.normalize, dtype=config.dtype)
    plans = {"ERM": (0.0, 0.0), "1-SAM": (config.rho_sam_erm, config.rho_sam_erm),
             "ERM -> 1-SAM": (0.0, config.rho_erm_sam), "1-SAM -> ERM": (config.rho_sam_erm, 0.0)}
    runs = {}
    for name in outputs.progress(list(plans), "switch", config.progress):
        trainer.reset()
        curve = {"steps": [], "train_loss": [], "test_loss": []}
        for phase, phase_rho in enumerate(plans[name]):
            trainer.set_rho(phase_rho)
            part = trainer.train(config.steps, config.chunk)
            curve["steps"] += [s + phase * config.steps for s in part["steps"]]
            curve["train_loss"] += part["train_loss"]
            curve["test_loss"] += part["test_loss"]
            if phase == 0:
                at_switch = trainer.evaluate()
        u, v = trainer.weights()
        runs[name] = {"rhos": list(plans[name]), **trainer.evaluate(), "at_switch": at_switch,
                      "beta": (u * v).tolist(), "u": u.tolist(), "v": v.tolist(), "curve": curve}
    summary = {
        "experiment": "switch",
        "settings": {"lr_c": config.lr_c, "steps_each": config.steps, "alpha": config.alpha,
                     "rho_erm_sam": config.rho_erm_sam, "rho_sam_erm": config.rho_sam_erm,
                     "normalize": config.normalize, "dtype": config.dtype},
        "runs": runs,
    }
    outputs.write_json(f"{config.out}/switch.json", summary)
    outputs.write_csv(f"{config.out}/switch.csv", ("run", "step", "train_loss", "test_loss"), [
        (name, *point) for name, res in runs.items()
        for point in zip(res["curve"]["steps"], res["curve"]["train_loss"], res["curve"]["test_loss"])
    ])
    plt = outputs.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"ERM": ("red", "-", 2.5), "1-SAM": ("tab:green", "-", 2.5),
              "ERM -> 1-SAM": ("orange", "--", 1.5), "1-SAM -> ERM": ("tab:cyan", "--", 1.5)}
    for name, res in runs.items():
        color, style, width = styles[name]
        for ax, key in zip(axes, ("train_loss", "test_loss")):
            ax.plot(res["curve"]["steps"], [outputs.finite_or_nan(v) for v in res["curve"][key]], color=color,
                    ls=style, lw=width, label=f"{name} " + "/".join(f"{r:g}" for r in res["rhos"]))
    for ax, key in zip(axes, ("train loss", "test loss")):
        ax.axvline(config.steps, color="gray", ls=":")
        ax.set(xscale="log", yscale="log", xlabel="step", ylabel=key)
    axes[1].legend(title=r"run, $\rho$ per phase", fontsize=8)
    fig.suptitle(f"Switching at step {config.steps}: $\\gamma = {config.lr_c:g}/d$, "
                 f"{'normalized' if config.normalize else 'unnormalized'} 1-SAM, {config.dtype}")
    outputs.save_figure(fig, f"{config.out}/switch.png")
    return summary


def interpolation(config):
    """Train/test loss along w(a) = (1 - a) w_ERM->1-SAM + a w_ERM (weights u, v; the notebook's cell 7);
    writes interpolation.{json,csv,png}."""
    X, y, X_test, y_test = config.data()[:4]
    trainer = Trainer("1-sam", config.lr_c / config.d, (X, y, X_test, y_test), config.alpha, config.normalize,
                      dtype=config.dtype)
    trainer.reset()
    endpoints = {}
    for stage in outputs.progress(["ERM", "ERM -> 1-SAM"], "interpolation", config.progress):
        trainer.set_rho(0.0 if stage == "ERM" else config.rho)
        trainer.train(config.steps, config.chunk)
        endpoints[stage] = trainer.weights()
    (u0, v0), (u1, v1) = endpoints["ERM -> 1-SAM"], endpoints["ERM"]
    coefs = np.linspace(*config.a_range, config.points)
    betas = [((1 - a) * u0 + a * u1) * ((1 - a) * v0 + a * v1) for a in coefs]
    train = [diag_net.loss(X, y, beta) for beta in betas]
    test = [diag_net.loss(X_test, y_test, beta) for beta in betas]
    inside = (coefs >= 0) & (coefs <= 1)
    best = int(np.argmin(test))
    summary = {
        "experiment": "interpolation",
        "settings": {"lr_c": config.lr_c, "steps_each": config.steps, "alpha": config.alpha, "rho": config.rho,
                     "normalize": config.normalize, "dtype": config.dtype, "a_range": list(config.a_range),
                     "points": config.points},
        "a": coefs.tolist(),
        "train_loss": train,
        "test_loss": test,
        "max_train_loss_on_segment": float(np.max(np.asarray(train)[inside])) if inside.any() else None,
        "min_test_loss": {"a": float(coefs[best]), "test_loss": test[best], "train_loss": train[best]},
        "endpoints": {name: {"train_loss": diag_net.loss(X, y, u * v), "test_loss": diag_net.loss(X_test, y_test, u * v)}
                      for name, (u, v) in endpoints.items()},
    }
    outputs.write_json(f"{config.out}/interpolation.json", summary)
    outputs.write_csv(f"{config.out}/interpolation.csv", ("a", "train_loss", "test_loss"),
                      list(zip(coefs.tolist(), train, test)))
    plt = outputs.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, scale in zip(axes, ("linear", "log")):
        ax.plot(coefs, test, color="tab:blue", label="test loss")
        ax.plot(coefs, train, color="tab:blue", ls=(0, (6, 3)), label="train loss")
        ax.plot(0, summary["endpoints"]["ERM -> 1-SAM"]["test_loss"], "r*", ms=12, label="test loss of ERM -> 1-SAM")
        ax.plot(1, summary["endpoints"]["ERM"]["test_loss"], "ro", ms=8, label="test loss of ERM")
        ax.set(yscale=scale, xlabel="a  (0: ERM -> 1-SAM, 1: ERM)", ylabel="squared loss")
    axes[0].set_title("linear scale (as the papers' figure)")
    axes[1].set_title("log scale")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Interpolation of (u, v): $\\gamma = {config.lr_c:g}/d$, ERM -> 1-SAM with $\\rho = {config.rho:g}$ "
                 f"({'normalized' if config.normalize else 'unnormalized'}), {config.dtype}")
    outputs.save_figure(fig, f"{config.out}/interpolation.png")
    return summary


def implicit_bias_experiment(config):
    """Effective scale of ERM, n-SAM and 1-SAM solutions (Theorem 1); writes implicit_bias.{json,csv,png}.

    Per coordinate, a_i = sqrt(u_i^2 - v_i^2) / 2 (= alpha / 2 for ERM's gradient flow, shrunk by SAM),
    against the first-order prediction a_ERM,i * exp(-rho * Delta_i) (`implicit_bias.first_order_deltas`);
    and the scalar effective alpha: the min-phi_alpha interpolator closest to the learned beta.
    """
    data = config.data()
    lr = config.lr_c / config.d
    deltas = implicit_bias.first_order_deltas(data[0], data[1], config.alpha, lr, config.steps)
    results = {}
    for method in outputs.progress(["erm", "n-sam", "1-sam"], "implicit bias", config.progress):
        trainer = Trainer(method, lr, data, config.alpha, config.normalize, dtype=config.dtype)
        res = train_run(trainer, 0.0 if method == "erm" else config.rho, config.steps, config.chunk)
        res.update(effective_alphas(res, data))
        res["alpha_per_coordinate"] = implicit_bias.alpha_per_coordinate(res["u"], res["v"]).tolist()
        results[method] = _brief(res)
    erm_log_a = np.log(results["erm"]["alpha_per_coordinate"])
    for method in SAM_METHODS:
        res = results[method]
        measured = np.log(res["alpha_per_coordinate"]) - erm_log_a
        predicted = -config.rho * np.asarray(deltas[method])
        res["log_shrinkage"] = {"measured": measured.tolist(), "first_order": predicted.tolist(),
                                "measured_sum": float(measured.sum()), "first_order_sum": float(predicted.sum())}
    summary = {
        "experiment": "implicit_bias",
        "settings": {"lr_c": config.lr_c, "steps": config.steps, "alpha": config.alpha,
                     "alpha_phi_at_init": config.alpha / 2, "rho": config.rho, "normalize": config.normalize,
                     "dtype": config.dtype},
        "erm_path": {"integral_of_loss": deltas["integral_of_loss"]},
        **results,
    }
    outputs.write_json(f"{config.out}/implicit_bias.json", summary)
    outputs.write_csv(f"{config.out}/implicit_bias.csv",
                      ("method", "train_loss", "test_loss", "effective_alpha", "alpha_per_coordinate_geomean",
                       "log_shrinkage_sum", "first_order_log_shrinkage_sum"),
                      [(m, r["train_loss"], r["test_loss"], r["effective_alpha"], r["alpha_per_coordinate_geomean"],
                        r.get("log_shrinkage", {}).get("measured_sum"), r.get("log_shrinkage", {}).get("first_order_sum"))
                       for m, r in results.items()])
    plt = outputs.pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    coordinates = np.arange(1, config.d + 1)
    for method, color in (("erm", "red"), ("n-sam", "tab:blue"), ("1-sam", "tab:green")):
        res = results[method]
        ax.plot(coordinates, res["alpha_per_coordinate"], "o-", ms=3, color=color,
                label=f"{method}: geomean {res['alpha_per_coordinate_geomean']:.3g}, fit {res['effective_alpha']:.3g}")
        if method in SAM_METHODS:
            first_order = np.exp(erm_log_a + np.asarray(res["log_shrinkage"]["first_order"]))
            ax.plot(coordinates, first_order, "x:", ms=5, color=color, label=f"{method}: first order in rho (Theorem 1)")
    ax.axhline(config.alpha / 2, color="gray", ls=":", label=f"init: alpha/2 = {config.alpha / 2:g}")
    ax.set(yscale="log", xlabel=f"coordinate i (1-{config.r}: support of beta*)",
           ylabel=r"$\sqrt{u_i^2 - v_i^2}\,/\,2$",
           title=f"Effective scale, $\\gamma = {config.lr_c:g}/d$, $\\rho = {config.rho:g}$, {config.steps} steps")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    outputs.save_figure(fig, f"{config.out}/implicit_bias.png")
    return summary


def effective_alphas(result, data):
    """The implicit-bias reading of a run: scalar effective alpha and the per-coordinate scale sqrt(u^2 - v^2)/2."""
    a_scalar, distance = implicit_bias.effective_alpha(result["beta"], data[0], data[1])
    per_coordinate = implicit_bias.alpha_per_coordinate(result["u"], result["v"])
    return {
        "effective_alpha": a_scalar,
        "distance": distance,
        "alpha_per_coordinate_geomean": float(np.exp(np.mean(np.log(np.maximum(per_coordinate, 1e-300))))),
    }


def _brief(result):
    """A run's result without the per-coordinate vectors (for grid summaries)."""
    return {k: v for k, v in result.items() if k not in ("u", "v")}


# ----------------------------------------------------------------------------------------- command line
def _print_run(result):
    print(f"{result['method']} rho={result['rho']:g} lr={result['lr']:.4g} steps={result['steps']}: "
          f"train loss {result['train_loss']:.3e}, test loss {result['test_loss']:.3e} ({result['seconds']:.1f} s)")


def _print_grid(summary):
    erm = summary["erm"]
    print(f"ERM test loss {erm['test_loss']:.3e} (train {erm['train_loss']:.1e})")
    print(f"{'rho':>7} {'n-SAM test':>12} {'(train)':>9} {'1-SAM test':>12} {'(train)':>9}")
    for n_sam, one_sam in zip(summary["n-sam"], summary["1-sam"]):
        cells = [outputs.finite_or_nan(r[k]) for r in (n_sam, one_sam) for k in ("test_loss", "train_loss")]
        print(f"{n_sam['rho']:>7g} {cells[0]:>12.3e} {cells[1]:>9.1e} {cells[2]:>12.3e} {cells[3]:>9.1e}")


def _print_switch(summary):
    print(f"{'run':<14} {'rhos':<11} {'test at switch':>14} {'final test':>11} {'(train)':>9}")
    for name, res in summary["runs"].items():
        rhos = "/".join(f"{r:g}" for r in res["rhos"])
        print(f"{name:<14} {rhos:<11} {res['at_switch']['test_loss']:>14.3e} {res['test_loss']:>11.3e} "
              f"{res['train_loss']:>9.1e}")


def _print_interpolation(summary):
    ends = summary["endpoints"]
    best = summary["min_test_loss"]
    print(f"test loss: a=0 (ERM -> 1-SAM) {ends['ERM -> 1-SAM']['test_loss']:.3e}, a=1 (ERM) {ends['ERM']['test_loss']:.3e}; "
          f"lowest {best['test_loss']:.3e} at a={best['a']:.4f}")
    print(f"train loss: max on [0, 1] {summary['max_train_loss_on_segment']:.3e}, "
          f"at a={summary['a'][0]:g}: {summary['train_loss'][0]:.3e}, at a={summary['a'][-1]:g}: {summary['train_loss'][-1]:.3e}")


def _print_implicit_bias(summary):
    print(f"{'method':<6} {'train':>9} {'test':>10} {'geomean a_i':>12} {'fit alpha':>10} {'sum log(a/a_ERM)':>17} "
          f"{'first order':>12}")
    for method in ("erm", "n-sam", "1-sam"):
        res = summary[method]
        shrink = res.get("log_shrinkage", {"measured_sum": 0.0, "first_order_sum": 0.0})
        print(f"{method:<6} {res['train_loss']:>9.1e} {res['test_loss']:>10.3e} {res['alpha_per_coordinate_geomean']:>12.4f} "
              f"{res['effective_alpha']:>10.4f} {shrink['measured_sum']:>17.4f} {shrink['first_order_sum']:>12.4f}")


def _command(function, report=None):
    """The command of an experiment: `function(config)`, the files it wrote, `report(result)`, --json."""

    def command(config):
        start = time.perf_counter()
        result = function(config)
        if "experiment" in result:
            name = result["experiment"]
            print(f"{name}: wrote {config.out}/{name}.png, .json, .csv in {time.perf_counter() - start:.1f} s")
        if report is not None:
            report(result)
        if config.json:
            outputs.print_json(result)

    return command


NORMALIZED = {"normalize": True}  # our earlier settings of switch and interpolation: normalized 1-SAM, rho 0.1
EXPERIMENTS = {
    "rho_grid": Experiment(_command(rho_grid, _print_grid), RhoGridConfig,
                           variants={"papers_rhos": {"rhos": PAPERS_RHOS},
                                     "float32": {"dtype": "float32", "steps": 10_000}},
                           help="test loss of ERM, n-SAM, 1-SAM over rho -> OUT/rho_grid.{png,json,csv}"),
    "run": Experiment(_command(run, _print_run), RunConfig, help="one method at one rho (--json: the result)"),
    "switch": Experiment(_command(switch, _print_switch), SwitchConfig,
                         variants={"normalized_rho0.1": {**NORMALIZED, "rho_erm_sam": 0.1, "rho_sam_erm": 0.1}},
                         help="ERM <-> 1-SAM switched after --steps -> OUT/switch.{png,json,csv}"),
    "interpolation": Experiment(_command(interpolation, _print_interpolation), InterpolationConfig,
                                variants={"normalized_rho0.1": {**NORMALIZED, "rho": 0.1}},
                                help="losses from ERM -> 1-SAM (a=0) to ERM (a=1) -> OUT/interpolation.{png,json,csv}"),
    "implicit_bias": Experiment(_command(implicit_bias_experiment, _print_implicit_bias), ImplicitBiasConfig,
                                help="effective alpha per method -> OUT/implicit_bias.{png,json,csv}"),
}
DEFAULT_EXPERIMENT = "rho_grid"

if __name__ == "__main__":
    from recipes import cli

    sys.exit(cli.main(["diag_nets", *sys.argv[1:]]))
