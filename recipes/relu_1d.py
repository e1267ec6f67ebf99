"""A 1 -> 100 -> 1 ReLU network on 12 points: ERM vs n-SAM, and the number of kinks each learns.

The 1D regression of Andriushchenko & Flammarion (2022) (`recipes.tasks.relu_1d`, data of Maennel et
al., 2018): hidden weights +-2.5 (random sign), hidden biases N(0, 2.5^2), output weights N(0, 4^2), no
output bias (NumPy RandomState(seed)); loss 0.5 * sum_i (f(x_i) - y_i)^2, full-batch GD with lr 5e-5;
ERM (rho = 0) vs n-SAM (rho = 0.3, the normalized ascent of the papers' notebook). The paper trains up
to 10^6 steps (or loss <= 1e-5). The papers' notebook decays SAM's lr linearly to 0 over the run and
keeps ERM's constant (`lr_decay="sam"`, the default here too); a run stops once its loss is <= 1e-5.

A kink is a breakpoint t_i = -b_i / w_i of a hidden unit inside [min x, max x] where the function's slope
actually changes: units whose breakpoints coincide (within `merge_tol`) are one kink, with slope change
sum_i a_i |w_i|; it counts when that change exceeds `slope_tol` (default 1: such a bend moves f by 0.25
over one data spacing of 0.25, a quarter of the standard deviation of y). Claim: SAM's function has
fewer kinks.

    msam relu_1d                                    # ERM and SAM, seed 0, 10^6 steps max, into results/relu_1d
    msam relu_1d --steps 100000 --seeds 0 1 2 3 4 --json
"""

import dataclasses
import sys
import time
from typing import Optional

import keras
import numpy as np

from keras_msam import SAMModel
from recipes import config as config_lib
from recipes import outputs, runner
from recipes.config import Experiment, setting
from recipes.tasks import relu_1d as task

LR_DECAY = ("sam", "all", "none")


@dataclasses.dataclass
class Relu1DConfig:
    seeds: tuple[int, ...] = setting((0,), "init seeds: one ERM and one SAM run each")
    steps: int = setting(1_000_000, "max steps per run (a run stops once its loss is <= loss_stop)")
    lr: float = setting(5e-5, "GD step size")
    rho: float = setting(0.3, "radius of the SAM runs (n-SAM: one shard of the 12 points)")
    normalize: bool = setting(True, "normalized ascent rho g / ||g|| (the papers' notebook), otherwise rho g")
    lr_decay: str = setting("sam", "linear decay of lr to 0 for: the SAM runs (the papers' notebook), all runs, "
                                   "none", choices=LR_DECAY)
    width: int = setting(100, "hidden units")
    loss_stop: float = setting(1e-5, "a run stops once its loss is <= this")
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
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width must be a positive int (hidden units); got width={self.width!r}.")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed.")


def train(config, rho, seed, lr_decay):
    """One full-batch run: GD (rho = 0) or n-SAM (rho > 0) through SAMModel, with `config`'s lr, steps,
    width, normalize, chunk and loss_stop, lr decayed linearly to 0 if `lr_decay`.

    Returns a JSON-ready dict: rho, lr, lr_decay, normalize, steps (taken), seed, loss, kinks,
    kink_locations, weights, curve (steps, loss), seconds.
    """
    chunk = runner.check_steps(config.steps, config.chunk)
    model = SAMModel(task.make_model(config.width, np.random.RandomState(seed)), rho=float(rho),
                     normalize=config.normalize, sam_enabled=rho > 0)
    lr = keras.optimizers.schedules.PolynomialDecay(config.lr, config.steps, end_learning_rate=0.0) if lr_decay \
        else config.lr
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss=task.HalfSumSquaredError())
    loop = runner.StepLoop(model, *task.make_data(), jit_compile=config.jit_compile)
    start = time.perf_counter()
    curve = loop.run(config.steps, chunk, measure=lambda m: {"train_loss": task.loss(m.inner.get_weights())},
                     stop=lambda record: record["train_loss"] <= config.loss_stop, progress=config.progress,
                     desc=f"{'SAM' if rho > 0 else 'ERM'} seed {seed} (x{chunk} steps)")
    seconds = time.perf_counter() - start
    weights = model.inner.get_weights()
    count, locations = task.count_kinks(weights)
    return {
        "rho": float(rho),
        "lr": float(config.lr),
        "lr_decay": bool(lr_decay),
        "normalize": bool(config.normalize),
        "steps": curve["step"][-1],
        "seed": int(seed),
        "loss": task.loss(weights),
        "kinks": count,
        "kink_locations": locations,
        "weights": [w.tolist() for w in weights],
        "curve": {"steps": curve["step"], "loss": curve["train_loss"]},
        "seconds": seconds,
    }


def compare(config):
    """ERM vs SAM for each seed; writes relu_1d.{json,png} into `config.out`; returns the summary."""
    runs = [{"erm": train(config, 0.0, seed, lr_decay=config.lr_decay == "all"),
             "sam": train(config, config.rho, seed, lr_decay=config.lr_decay != "none")} for seed in config.seeds]
    summary = {
        "settings": config_lib.to_dict(config),
        "kinks_erm": [r["erm"]["kinks"] for r in runs],
        "kinks_sam": [r["sam"]["kinks"] for r in runs],
        "loss_erm": [r["erm"]["loss"] for r in runs],
        "loss_sam": [r["sam"]["loss"] for r in runs],
        "runs": runs,
    }
    outputs.write_json(f"{config.out}/relu_1d.json", summary)
    _plot(runs, f"{config.out}/relu_1d.png")
    return summary


def _plot(runs, path):
    x, y = task.make_data()
    grid = np.linspace(x.min() - 0.05, x.max() + 0.05, 1000)
    fig, axes = outputs.pyplot().subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        ax.scatter(x, y, color="orange", zorder=3, label="data")
        for key, color, name in (("erm", "tab:red", "ERM"), ("sam", "tab:green", "SAM")):
            res = run[key]
            ax.plot(grid, task.predict(res["weights"], grid), color=color, lw=2,
                    label=f"{name} (rho={res['rho']:g}): {res['kinks']} kinks, loss {res['loss']:.1e}")
            for t in res["kink_locations"]:
                ax.axvline(t, color=color, alpha=0.25, lw=0.8)
        title = f"seed {run['erm']['seed']}: ERM {run['erm']['steps']} steps, SAM {run['sam']['steps']} steps"
        ax.set(xlabel="x", ylabel="f(x)", title=title)
        ax.legend(fontsize=8)
    outputs.save_figure(fig, path)


def _main(config):
    summary = compare(config)
    for seed, run in zip(config.seeds, summary["runs"]):
        erm, sam = run["erm"], run["sam"]
        print(f"seed {seed}: ERM {erm['kinks']} kinks (loss {erm['loss']:.2e}, {erm['steps']} steps), "
              f"SAM {sam['kinks']} kinks (loss {sam['loss']:.2e}, {sam['steps']} steps)")
    print(f"wrote {config.out}/relu_1d.png and relu_1d.json")
    if config.json:
        outputs.print_json({k: v for k, v in summary.items() if k != "runs"})


EXPERIMENTS = {"compare": Experiment(_main, Relu1DConfig, help="ERM vs SAM per seed -> OUT/relu_1d.{png,json}")}
DEFAULT_EXPERIMENT = "compare"

if __name__ == "__main__":
    from recipes import cli

    sys.exit(cli.main(["relu_1d", *sys.argv[1:]]))
