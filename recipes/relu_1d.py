"""A 1 -> 100 -> 1 ReLU network on 12 points: ERM vs n-SAM, and the number of kinks each learns.

The 1D regression of Andriushchenko & Flammarion (2022) (`recipes.tasks.relu_1d`, data of Maennel et
al., 2018), with the settings of the papers' notebook (tml-epfl/understanding-sam,
one_layer_relu_nets/1d_nn.ipynb): hidden weights +-2.5 (random sign), hidden biases N(0, 2.5^2), output
weights N(0, 4^2), no output bias (NumPy RandomState(seed), seeds 0-4); loss 0.5 * sum_i (f(x_i) - y_i)^2,
full-batch GD with lr 5e-5; ERM (rho = 0) vs n-SAM (rho = 0.3, normalized ascent). Like the notebook's
loop, a run takes at most 10^6 + 1 steps and stops after the step at which the loss it tests is
<= 1e-5: the loss at w for ERM, the perturbed loss at w + eps for SAM (so SAM practically always runs
all its steps). SAM's lr decays as 5e-5 * (1 - n / 10^6) at step n = 1, 2, ...; ERM's stays constant.

A kink is a breakpoint t_i = -b_i / w_i of a hidden unit inside [min x, max x] where the function's slope
actually changes: units whose breakpoints coincide (within `merge_tol`) are one kink, with slope change
sum_i a_i |w_i|; it counts when that change exceeds `slope_tol` (default 1: such a bend moves f by 0.25
over one data spacing of 0.25, a quarter of the standard deviation of y). Claim: SAM's function has
fewer kinks.

    msam relu_1d                                    # ERM and SAM, seeds 0-4, into results/relu_1d
    msam relu_1d --variant seed0                    # seed 0 only
"""

import dataclasses
import math
import sys
import time
from typing import Optional

import keras
import numpy as np
from keras import ops

from keras_msam import SAMModel
from recipes import config as config_lib
from recipes import outputs, runner
from recipes.config import Experiment, setting
from recipes.tasks import relu_1d as task

LR_DECAY = ("sam", "all", "none")


@dataclasses.dataclass
class Relu1DConfig:
    seeds: tuple[int, ...] = setting((0, 1, 2, 3, 4), "init seeds: one ERM and one SAM run each")
    steps: int = setting(1_000_001, "max steps per run (the notebook: iter_max + 1 = 10^6 + 1)")
    lr: float = setting(5e-5, "GD step size")
    rho: float = setting(0.3, "radius of the SAM runs (n-SAM: one shard of the 12 points)")
    normalize: bool = setting(True, "normalized ascent rho g / ||g|| (the papers' notebook), otherwise rho g")
    lr_decay: str = setting("sam", "linear decay of lr for: the SAM runs (the papers' notebook), all runs, none",
                            choices=LR_DECAY)
    decay_steps: int = setting(1_000_000, "a decayed lr is lr * (1 - n / decay_steps) at step n = 1, 2, ..., "
                                          "never below 0 (the notebook's iter_max)")
    width: int = setting(100, "hidden units")
    loss_stop: float = setting(1e-5, "a run stops after the step at which its tested loss (at w for ERM, at "
                                     "w + eps for SAM) is <= this")
    chunk: Optional[int] = setting(None, "steps per compiled call and between loss checks "
                                         "(default: steps / 100 or less)")
    jit_compile: bool = setting(True, "XLA for the compiled step loop")
    out: str = setting("results/relu_1d", "output directory")
    json: bool = setting(False, "print the summary (without weights) as JSON on the last line")
    progress: bool = setting(True, "show the progress on stderr")

    def __post_init__(self):
        if not self.rho >= 0:
            raise ValueError(f"rho must be >= 0 (0 is ERM); got rho={self.rho!r}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got lr={self.lr!r}.")
        runner.check_steps(self.steps, self.chunk)
        if self.lr_decay not in LR_DECAY:
            raise ValueError(f"lr_decay must be one of {', '.join(LR_DECAY)}; got lr_decay={self.lr_decay!r}.")
        if not isinstance(self.decay_steps, int) or self.decay_steps < 1:
            raise ValueError(f"decay_steps must be a positive int; got decay_steps={self.decay_steps!r}.")
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width must be a positive int (hidden units); got width={self.width!r}.")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed.")


@keras.saving.register_keras_serializable(package="keras_msam_recipes")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr * max(0, 1 - (t + 1) / decay_steps) at optimizer step t = 0, 1, ...: the notebook's
    lr_max * (1 - n / iter_max) at its step n = t + 1 (its last step, n = iter_max + 1, would be -lr / 10^6)."""

    def __init__(self, lr, decay_steps):
        self.lr, self.decay_steps = float(lr), int(decay_steps)

    def __call__(self, step):
        remaining = float(self.decay_steps) - 1.0 - ops.cast(step, "float32")  # exact in float32 below 2^24
        return self.lr * ops.maximum(0.0, remaining) / float(self.decay_steps)

    def get_config(self):
        return {"lr": self.lr, "decay_steps": self.decay_steps}


def _state(model):
    return model.inner.get_weights(), int(model.optimizer.iterations.numpy())


def _restore(model, state):
    model.inner.set_weights(state[0])
    model.optimizer.iterations.assign(state[1])


def _first_stop(loop, model, tested, loss_stop, span):
    """From the current weights w_0 (tested(w_0) > loss_stop) with tested(w_span) <= loss_stop: moves the
    model to w_k, the first k in 1..span with tested(w_k) <= loss_stop as seen through chunks of
    ceil(span / 100) steps, then ceil(that / 100), ..., down to single steps; returns k."""
    offset = 0
    while True:
        size, taken = max(1, math.ceil(span / 100)), 0
        while True:
            before = _state(model)
            step = min(size, span - taken)
            loop.run(step, step)
            taken += step
            if taken == span or tested(model.inner.get_weights()) <= loss_stop:
                break
        if step == 1:
            return offset + taken
        _restore(model, before)  # the first step below loss_stop lies in this last chunk
        offset, span = offset + taken - step, step


class Trainer:
    """One compiled SAMModel (rho > 0: n-SAM; rho = 0: GD) reused for every seed: `start(seed)` sets the
    seed's initial weights and the step count back to 0."""

    def __init__(self, config, rho, lr_decay):
        self.rho, self.lr_decay = float(rho), bool(lr_decay)
        self.model = SAMModel(task.make_model(config.width, np.random.RandomState(0)), rho=self.rho,
                              normalize=config.normalize, sam_enabled=self.rho > 0)
        lr = LinearDecay(config.lr, config.decay_steps) if lr_decay else config.lr
        self.model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss=task.HalfSumSquaredError())
        self.loop = runner.StepLoop(self.model, *task.make_data(), jit_compile=config.jit_compile)

    def start(self, config, seed):
        weights = task.initial_weights(config.width, np.random.RandomState(seed))
        _restore(self.model, ([np.asarray(w, "float32") for w in weights], 0))


def train(config, rho, seed, lr_decay, trainer=None):
    """One full-batch run: GD (rho = 0) or n-SAM (rho > 0) through SAMModel, with `config`'s lr, steps,
    width, normalize, chunk, decay_steps and loss_stop, lr decayed linearly to 0 if `lr_decay`; `trainer`
    (a `Trainer` of the same rho and lr_decay) saves compiling again.

    Stops as the notebook's loop does: after the step n at which the tested loss of w_{n-1} (L(w) for
    ERM, L(w + eps) for SAM) is <= loss_stop, or after `config.steps` steps. The test runs at the end of
    every chunk; a chunk that ends below loss_stop is rerun in finer chunks down to the first step below.

    Returns a JSON-ready dict: rho, lr, lr_decay, normalize, steps (taken), seed, loss (at w),
    perturbed_loss (at w + eps, SAM), stopped (the tested loss reached loss_stop), kinks, kink_locations,
    weights, curve (steps, loss, perturbed_loss for SAM), seconds.
    """
    chunk = runner.check_steps(config.steps, config.chunk)
    if trainer is None:
        trainer = Trainer(config, rho, lr_decay)
    elif (trainer.rho, trainer.lr_decay) != (float(rho), bool(lr_decay)):
        raise ValueError(f"trainer was built for rho={trainer.rho}, lr_decay={trainer.lr_decay}; "
                         f"this run needs rho={rho}, lr_decay={lr_decay}.")
    trainer.start(config, seed)
    model, loop = trainer.model, trainer.loop
    if rho > 0:
        def tested(weights):
            return task.perturbed_loss(weights, rho, config.normalize)
    else:
        tested = task.loss
    start = time.perf_counter()
    curve = {"steps": [], "loss": [], **({"perturbed_loss": []} if rho > 0 else {})}
    taken, stopped = 0, tested(model.inner.get_weights()) <= config.loss_stop
    desc = f"{'SAM' if rho > 0 else 'ERM'} seed {seed} (x{chunk} steps)"
    for _ in outputs.progress(range(0, config.steps, chunk), desc, enabled=config.progress):
        if stopped:
            break
        before = _state(model)
        loop.run(chunk, chunk)
        weights = model.inner.get_weights()
        if tested(weights) <= config.loss_stop:
            _restore(model, before)
            taken += _first_stop(loop, model, tested, config.loss_stop, chunk)
            stopped = True
        else:
            taken += chunk
        weights = model.inner.get_weights()
        curve["steps"].append(taken)
        curve["loss"].append(task.loss(weights))
        if rho > 0:
            curve["perturbed_loss"].append(task.perturbed_loss(weights, rho, config.normalize))
        if not math.isfinite(curve["loss"][-1]):
            break
    if stopped and taken < config.steps:  # the notebook takes the step of the iteration whose loss it tested
        loop.run(1, 1)
        taken += 1
    seconds = time.perf_counter() - start
    weights = model.inner.get_weights()
    count, locations = task.count_kinks(weights)
    return {
        "rho": float(rho),
        "lr": float(config.lr),
        "lr_decay": bool(lr_decay),
        "normalize": bool(config.normalize),
        "steps": taken,
        "seed": int(seed),
        "loss": task.loss(weights),
        "perturbed_loss": task.perturbed_loss(weights, rho, config.normalize) if rho > 0 else None,
        "stopped": bool(stopped),
        "kinks": count,
        "kink_locations": locations,
        "weights": [w.tolist() for w in weights],
        "curve": curve,
        "seconds": seconds,
    }


def compare(config):
    """ERM vs SAM for each seed; writes relu_1d.{json,png} into `config.out`; returns the summary."""
    erm = Trainer(config, 0.0, lr_decay=config.lr_decay == "all")
    sam = Trainer(config, config.rho, lr_decay=config.lr_decay != "none")
    runs = [{"erm": train(config, 0.0, seed, erm.lr_decay, erm), "sam": train(config, config.rho, seed, sam.lr_decay, sam)}
            for seed in config.seeds]
    summary = {
        "settings": config_lib.to_dict(config),
        "kinks_erm": [r["erm"]["kinks"] for r in runs],
        "kinks_sam": [r["sam"]["kinks"] for r in runs],
        "loss_erm": [r["erm"]["loss"] for r in runs],
        "loss_sam": [r["sam"]["loss"] for r in runs],
        "steps_erm": [r["erm"]["steps"] for r in runs],
        "steps_sam": [r["sam"]["steps"] for r in runs],
        "runs": runs,
    }
    outputs.write_json(f"{config.out}/relu_1d.json", summary)
    _plot(runs, f"{config.out}/relu_1d.png")
    return summary


def _plot(runs, path):
    x, y = task.make_data()
    grid = np.linspace(x.min() - 0.05, x.max() + 0.05, 1000)
    columns = min(len(runs), 3)
    rows = math.ceil(len(runs) / columns)
    fig, axes = outputs.pyplot().subplots(rows, columns, figsize=(5.5 * columns, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, run in zip(axes.flat, runs):
        ax.scatter(x, y, color="orange", zorder=3, label="data")
        for key, color, name in (("erm", "tab:red", "ERM"), ("sam", "tab:green", "SAM")):
            res = run[key]
            ax.plot(grid, task.predict(res["weights"], grid), color=color, lw=2,
                    label=f"{name} (rho={res['rho']:g}): {res['kinks']} kinks, loss {res['loss']:.1e}")
            for t in res["kink_locations"]:
                ax.axvline(t, color=color, alpha=0.25, lw=0.8)
        title = f"seed {run['erm']['seed']}: ERM {run['erm']['steps']} steps, SAM {run['sam']['steps']} steps"
        ax.set(xlabel="x", ylabel="f(x)", title=title)
        ax.legend(fontsize=7)
    outputs.save_figure(fig, path, dpi=100)


def _main(config):
    start = time.perf_counter()
    summary = compare(config)
    for seed, run in zip(config.seeds, summary["runs"]):
        erm, sam = run["erm"], run["sam"]
        print(f"seed {seed}: ERM {erm['kinks']} kinks (loss {erm['loss']:.2e}, {erm['steps']} steps), "
              f"SAM {sam['kinks']} kinks (loss {sam['loss']:.2e}, perturbed {sam['perturbed_loss']:.2e}, "
              f"{sam['steps']} steps)")
    print(f"wrote {config.out}/relu_1d.png and relu_1d.json in {time.perf_counter() - start:.0f} s")
    if config.json:
        outputs.print_json({k: v for k, v in summary.items() if k != "runs"})


EXPERIMENTS = {"compare": Experiment(_main, Relu1DConfig, variants={"seed0": {"seeds": (0,)}},
                                     help="ERM vs SAM per seed -> OUT/relu_1d.{png,json}")}
DEFAULT_EXPERIMENT = "compare"

if __name__ == "__main__":
    from recipes import cli

    sys.exit(cli.main(["relu_1d", *sys.argv[1:]]))
