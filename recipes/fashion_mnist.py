"""Fashion-MNIST trained to convergence: the papers' deep-net claims on real data, on 2 CPU cores.

    msam fashion_mnist grid --out results/fashion_mnist        # the whole grid, resumable; table + plots
    msam fashion_mnist tune --out results/fashion_mnist_tune   # the rho search on the validation split
    msam fashion_mnist report --out results/fashion_mnist      # table + plots of the runs finished so far
    msam fashion_mnist grid --variant smoke --data-dir DIR --out /tmp/fm_smoke   # the CI-sized pipeline check

The claims of "Towards Understanding Sharpness-Aware Minimization" about deep nets: SAM's test error is
below ERM's, smaller m is better, and SAM memorises fewer noisy labels. They are about models trained to
convergence (200 epochs of CIFAR, by which time ERM fits the flipped labels), so the grid is sized to
converge here: a 1000-image training subset (`images.load(train_size=...)`), the papers' piecewise schedule
over 100 epochs, so that ERM reaches ~100 % training accuracy on the given labels, noisy ones included
(docs/recipes/fashion_mnist.md has the pilot that sized it).

Every run is one `recipes.resnet` run (`resnet.train` with a `ResNetConfig`: no training loop of its
own): ERM (SAM off), SAM with m = the batch, m-SAM with smaller m, on clean and on symmetric-noisy labels,
over seeds (the seed also draws the validation split and the noise, as in the papers). Per run the grid
keeps, in OUT/runs/NAME: the resnet outputs (history.csv with the test / validation / train errors every
--eval-every epochs, results.json with the final and the best-by-validation test error and the m-sharpness
of the final model at a fixed rho on clean labels (`msam resnet --sharpness-m`), backups). A finished run
(results.json) is skipped; an
interrupted one resumes from its last epoch (`BackupAndRestore`). Then OUT/results.csv (one row per run),
OUT/summary.csv and OUT/summary.md (mean and spread over seeds, every seed listed), and the plots
OUT/test_error_vs_m.png and OUT/memorisation.png.

rho is one value for every m and noise level, chosen beforehand on the validation split by `tune`
(`keras_msam.tuning.SAMHyperModel` under KerasTuner's grid search, best validation accuracy of each
trial), never on test numbers: docs/recipes/fashion_mnist.md has the search and its numbers.
"""

import dataclasses
import json
import math
import os
import sys
import time
from typing import Optional

import numpy as np

from recipes import outputs
from recipes.config import Experiment, SettingError, checking_settings, setting

OUT = "results/fashion_mnist"
# (name, columns of results.csv): one row per run
RESULT_COLUMNS = (
    "name", "method", "m", "noise", "seed", "rho", "final_test_error", "best_val_test_error", "best_val_epoch",
    "min_test_error", "train_error", "train_error_clean", "train_error_noisy", "memorised", "final_val_error",
    "seconds_per_epoch", "epoch_time_vs_erm", "sharpness_m", "sharpness", "wall_time_s",
)
SUMMARY_METRICS = (
    ("final_test_error", "final test error"),
    ("best_val_test_error", "test error at best val"),
    ("train_error_clean", "train error, clean labels"),
    ("memorised", "noisy labels fitted"),
    ("sharpness", "m-sharpness (smallest m measured)"),
    ("epoch_time_vs_erm", "time per epoch / ERM's"),
)


@dataclasses.dataclass
class FashionConfig:
    """The grid (and the rho search): data, model and schedule shared by every run."""

    # data
    data_dir: Optional[str] = setting(None, "directory of the Fashion-MNIST IDX files (default: Debian's "
                                            "/usr/share/datasets/fashion-mnist, Keras' cache, TFDS)")
    train_size: int = setting(1000, "training examples (the first ones after the validation split)")
    val_size: int = setting(500, "validation examples (a random subset of the train split, seeded by the seed)")
    noise: tuple[float, ...] = setting((0.0, 0.4), "symmetric label-noise levels (train and validation labels)")
    augment: bool = setting(False, "random crops (2-pixel padding) of the training images (--augment; off: the "
                                   "runs fit the noisy labels within 100 epochs, see the docs)")
    # model and optimisation (each run: msam resnet with these)
    model: str = setting("resnet18", "network (keras_msam.models)")
    width: int = setting(8, "channels of the first stage")
    epochs: int = setting(100, "epochs per run")
    batch_size: int = setting(128, "batch size")
    lr: float = setting(0.05, "peak learning rate of the piecewise schedule (/10 at 50 %, /100 at 75 %)")
    wd: float = setting(5e-4, "lambda of 0.5 lambda ||w||^2")
    # methods
    rho: float = setting(0.1, "rho of every SAM run (chosen by `tune --epochs 30` on the validation split)")
    erm: bool = setting(True, "include ERM (--no-erm: do not)")
    ms: tuple[int, ...] = setting((128, 32, 8), "m of the SAM runs (m = --batch-size is SAM on the whole batch)")
    seeds: tuple[int, ...] = setting((0, 1), "seeds (each draws the weights, the validation split and the noise)")
    shards_per_pass: Optional[int] = setting(1, "SAMModel shards_per_pass (1: one plain pass per shard, the "
                                                "fastest here for m >= 8; None: all shards in one vectorized pass)")
    # measurements
    eval_every: int = setting(10, "test / validation / train errors every K epochs (and before training)")
    sharpness_rho: float = setting(0.1, "rho of the m-sharpness of the final models (clean labels)")
    sharpness_ms: tuple[int, ...] = setting((8, 32, 128), "m of the m-sharpness (one value per m)")
    sharpness_points: int = setting(256, "training points of the m-sharpness (the first ones)")
    # run
    out: str = setting(OUT, "output directory")
    jit: Optional[bool] = setting(None, "XLA compilation of the step (default: on with a GPU)")
    verbose: int = setting(2, "fit verbosity of each run", choices=(0, 1, 2))
    # the rho search (`tune`)
    tune_rhos: tuple[float, ...] = setting((0.02, 0.05, 0.1, 0.2), "tune: the rho values tried")
    tune_m: int = setting(32, "tune: m of the searched SAM runs")
    tune_noise: float = setting(0.4, "tune: label noise of the searched runs")
    tune_seed: int = setting(0, "tune: seed of the searched runs")

    def __post_init__(self):
        self.check()

    def check(self):
        if not all(0.0 <= p < 1.0 for p in self.noise) or not self.noise:
            raise ValueError(f"--noise must be fractions in [0, 1); got {self.noise}.")
        bad = [m for m in self.ms + (self.tune_m,) if not 1 <= m <= self.batch_size]
        if bad:
            raise ValueError(f"--ms / --tune-m {bad} must be in [1, --batch-size {self.batch_size}].")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct seeds; got {self.seeds}.")
        if not self.erm and not self.ms:
            raise ValueError("nothing to run: --no-erm and no --ms.")
        if self.train_size < self.batch_size:
            raise ValueError(f"--train-size {self.train_size} is smaller than --batch-size {self.batch_size}.")
        if self.rho < 0 or self.sharpness_rho < 0 or min(self.tune_rhos, default=1) <= 0:
            raise ValueError("--rho, --sharpness-rho must be >= 0 and --tune-rhos > 0.")
        bad = [m for m in self.sharpness_ms if not 1 <= m <= self.sharpness_points]
        if bad:
            raise ValueError(f"--sharpness-ms {bad} must be in [1, --sharpness-points {self.sharpness_points}].")
        return self


# ----------------------------------------------------------------------------------------- runs
@dataclasses.dataclass(frozen=True)
class Run:
    method: str  # "erm" or "sam"
    m: Optional[int]  # None for ERM
    noise: float
    seed: int

    @property
    def name(self):
        method = "erm" if self.method == "erm" else f"m{self.m}"
        return f"{method}_noise{round(100 * self.noise)}_seed{self.seed}"

    def label(self, batch_size):
        if self.method == "erm":
            return "ERM"
        return f"SAM m={self.m}" + (" (batch)" if self.m == batch_size else "")


def grid_runs(config):
    """The runs of the grid, cheapest first within each (noise, seed): ERM, then m from large to small."""
    methods = ([("erm", None)] if config.erm else []) + [("sam", m) for m in sorted(config.ms, reverse=True)]
    return [Run(method, m, noise, seed) for seed in config.seeds for noise in config.noise for method, m in methods]


def run_config(config, run):
    """The `recipes.resnet.ResNetConfig` of one run."""
    from recipes import resnet

    return resnet.ResNetConfig(
        dataset="fashion_mnist", data_dir=config.data_dir, download=False, augment=config.augment,
        train_size=config.train_size,
        val_size=config.val_size, label_noise=run.noise, noise_type="symmetric", noise_seed=run.seed,
        model=config.model, width=config.width, rho=config.rho if run.method == "sam" else 0.0, m=run.m,
        sam_window=(0.0, 1.0) if run.method == "sam" else (0.0, 0.0), shards_per_pass=config.shards_per_pass,
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, wd=config.wd, schedule="piecewise",
        jit=config.jit, out=os.path.join(config.out, "runs", run.name), seed=run.seed,
        eval_every=config.eval_every, swa=False, sharpness_m=config.sharpness_ms, sharpness_rho=config.sharpness_rho,
        sharpness_points=config.sharpness_points, verbose=config.verbose,
    )


def _read_json(path):
    with open(path) as handle:
        return json.load(handle)


def finished(config, run):
    """Whether the run's outputs are complete; an error if its directory holds a run of other settings."""
    directory = os.path.join(config.out, "runs", run.name)
    if not os.path.exists(os.path.join(directory, "results.json")):
        return False
    saved = _read_json(os.path.join(directory, "results.json"))["config"]
    wanted = outputs.json_safe(dataclasses.asdict(run_config(config, run)))
    changed = sorted(k for k in wanted if k not in ("verbose", "out", "data_dir") and saved.get(k) != wanted[k])
    if changed:
        raise SettingError(
            f"{directory} holds a finished run with other settings ({', '.join(changed)}): use another --out, or "
            "remove that directory to run it again."
        )
    return True


def _data_for(config, run):
    from recipes.tasks import images

    data = images.load("fashion_mnist", config.data_dir, download=False, seed=run.seed, val_size=config.val_size,
                       train_size=config.train_size)
    return data.with_label_noise(run.noise, "symmetric", run.seed) if run.noise > 0 else data


def grid(config):
    """Runs every run of the grid not finished yet, then writes the table and the plots; returns the rows."""
    import keras

    from recipes import resnet

    runs = grid_runs(config)
    with checking_settings():
        todo = [run for run in runs if not finished(config, run)]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run; outputs in {config.out}")
    for index, run in enumerate(todo):
        started = time.time()
        print(f"[{index + 1}/{len(todo)}] {run.label(config.batch_size)}, noise {run.noise:g}, seed {run.seed}",
              flush=True)
        keras.backend.clear_session()
        resnet.train(run_config(config, run))
        print(f"    done in {time.time() - started:.0f} s", flush=True)
    return report(config)


# ----------------------------------------------------------------------------------------- the report
def run_row(config, run, erm_seconds=None):
    """One row of results.csv (a dict with RESULT_COLUMNS) from the run's files; None if not finished."""
    directory = os.path.join(config.out, "runs", run.name)
    if not os.path.exists(os.path.join(directory, "results.json")):
        return None
    results = _read_json(os.path.join(directory, "results.json"))
    sharpness = results["m_sharpness"]  # {m (a string in JSON): the m-sharpness of the final model}
    seconds = seconds_per_epoch(results.get("history") or [])
    noisy = results.get("train_error_noisy")
    best = results.get("val_selection") or {}
    tests = [r["test_error"] for r in results.get("evaluations", []) if r.get("test_error") is not None]
    sharpness_m = min(int(k) for k in sharpness)  # one m for every run, so that the column compares models
    return {
        "name": run.name, "method": run.label(config.batch_size), "m": run.m, "noise": run.noise, "seed": run.seed,
        "rho": results["config"]["rho"] if run.method == "sam" else 0.0,
        "final_test_error": results.get("test_error"), "best_val_test_error": best.get("test_error"),
        "best_val_epoch": best.get("epoch"), "min_test_error": min(tests) if tests else None,
        "train_error": results.get("train_error"), "train_error_clean": results.get("train_error_clean"),
        "train_error_noisy": noisy, "memorised": None if noisy is None else 1.0 - noisy,
        "final_val_error": results.get("val_error"), "seconds_per_epoch": seconds,
        "epoch_time_vs_erm": seconds / erm_seconds if seconds and erm_seconds else None,
        "sharpness_m": sharpness_m, "sharpness": sharpness[str(sharpness_m)]["sharpness"],
        "wall_time_s": results.get("wall_time_s"),
        **{f"sharpness_m{k}": v["sharpness"] for k, v in sorted(sharpness.items(), key=lambda kv: int(kv[0]))},
    }


def seconds_per_epoch(history):
    """Median training time of an epoch (`epoch_seconds`, evaluations excluded), the first epoch (tracing)
    left out."""
    times = [row["epoch_seconds"] for row in history[1:] if row.get("epoch_seconds") is not None]
    return float(np.median(times)) if times else None


def collect(config):
    """The rows of the finished runs, in grid order (ERM's seconds per epoch: same noise and seed)."""
    rows = []
    for run in grid_runs(config):
        erm = Run("erm", None, run.noise, run.seed)
        erm_row = run_row(config, erm) if config.erm else None
        row = run_row(config, run, erm_row["seconds_per_epoch"] if erm_row else None)
        if row is not None:
            rows.append(row)
    return rows


def _fmt(value, style="percent"):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return {"percent": f"{100 * value:.1f}", "ratio": f"{value:.2f}", "number": f"{value:.3g}"}[style]


def summarize(rows):
    """Mean, standard deviation and the per-seed values of each metric, per (noise, method)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["noise"], row["method"], row["m"]), []).append(row)
    summary = []
    for (noise, method, m), members in groups.items():
        entry = {"noise": noise, "method": method, "m": m, "seeds": [r["seed"] for r in members]}
        for key, _ in SUMMARY_METRICS:
            values = [r[key] for r in members if r[key] is not None]
            entry[key] = values
            entry[key + "_mean"] = float(np.mean(values)) if values else None
            entry[key + "_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        summary.append(entry)
    return summary


def markdown_table(summary):
    """Markdown: one row per (noise, method); errors in %, mean ± sd over seeds, then every seed's value."""
    header = ["noise", "method", "seeds"] + [label for _, label in SUMMARY_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in summary:
        cells = [f"{round(100 * entry['noise'])} %", entry["method"], " ".join(str(s) for s in entry["seeds"])]
        for key, _ in SUMMARY_METRICS:
            percent = {"sharpness": "number", "epoch_time_vs_erm": "ratio"}.get(key, "percent")
            values = entry[key]
            if not values:
                cells.append("-")
                continue
            text = _fmt(entry[key + "_mean"], percent)
            if entry[key + "_std"] is not None:
                text += f" ± {_fmt(entry[key + '_std'], percent)}"
            if len(values) > 1:
                text += " (" + ", ".join(_fmt(v, percent) for v in values) + ")"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(config):
    """OUT/results.csv, summary.csv, summary.md and the plots from the finished runs; returns the rows."""
    rows = collect(config)
    if not rows:
        print(f"no finished run in {config.out}/runs yet")
        return rows
    sharp_keys = sorted({k for r in rows for k in r if k.startswith("sharpness_m") and k != "sharpness_m"},
                        key=lambda k: int(k[len("sharpness_m"):]))
    columns = RESULT_COLUMNS + tuple(sharp_keys)
    outputs.write_csv(os.path.join(config.out, "results.csv"), columns, [[r.get(c) for c in columns] for r in rows])
    summary = summarize(rows)
    summary_columns = ["noise", "method", "m", "seeds"] + [f"{k}_{s}" for k, _ in SUMMARY_METRICS for s in ("mean", "std")]
    outputs.write_csv(os.path.join(config.out, "summary.csv"), summary_columns,
                      [[" ".join(map(str, e["seeds"])) if c == "seeds" else e[c] for c in summary_columns]
                       for e in summary])
    table = markdown_table(summary)
    with open(os.path.join(config.out, "summary.md"), "w") as handle:
        handle.write(table)
    plot_test_error_vs_m(config, rows, os.path.join(config.out, "test_error_vs_m.png"))
    plot_memorisation(config, os.path.join(config.out, "memorisation.png"))
    print(table, end="")
    return rows


def plot_test_error_vs_m(config, rows, path):
    """Test error (final and best-by-validation) against m, one panel per noise level; ERM as a band.
    Points: every seed; error bars: mean ± sd over seeds."""
    plt = outputs.pyplot()
    levels = sorted({r["noise"] for r in rows})
    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 4), squeeze=False)
    for ax, noise in zip(axes[0], levels):
        here = [r for r in rows if r["noise"] == noise]
        for key, color, label in (("final_test_error", "C0", "final"), ("best_val_test_error", "C1", "best on val")):
            sam = [r for r in here if r["m"] is not None and r[key] is not None]
            ms = sorted({r["m"] for r in sam})
            if ms:
                values = [[100 * r[key] for r in sam if r["m"] == m] for m in ms]
                ax.errorbar(ms, [np.mean(v) for v in values], yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in values],
                            color=color, marker="o", capsize=4, label=f"SAM, {label}")
                ax.scatter([m for m, v in zip(ms, values) for _ in v], [x for v in values for x in v], color=color,
                           s=10, alpha=0.5)
            erm = [100 * r[key] for r in here if r["m"] is None and r[key] is not None]
            if erm:
                mean, sd = np.mean(erm), (np.std(erm, ddof=1) if len(erm) > 1 else 0.0)
                ax.axhline(mean, color=color, linestyle="--", label=f"ERM, {label}")
                ax.axhspan(mean - sd, mean + sd, color=color, alpha=0.12)
        ax.set_xscale("log", base=2)
        all_ms = sorted({r["m"] for r in here if r["m"] is not None})
        ax.set_xticks(all_ms, [str(m) for m in all_ms])
        ax.minorticks_off()
        ax.set_xlabel("m (examples per SAM shard)")
        ax.set_ylabel("test error (%)")
        ax.set_title(f"{round(100 * noise)} % symmetric label noise")
        ax.legend(fontsize=8)
    fig.suptitle(f"Fashion-MNIST, {config.train_size} training images, {config.model} width {config.width}, "
                 f"rho {config.rho:g}\n(points: seeds; bars: mean ± sd)", fontsize=10)
    return outputs.save_figure(fig, path)


def plot_memorisation(config, path):
    """Per noisy level: the fraction of flipped training labels the model fits, and the test error, over
    epochs; one line per method (mean over seeds, thin lines: each seed)."""
    plt = outputs.pyplot()
    levels = [p for p in sorted(set(config.noise)) if p > 0] or sorted(set(config.noise))
    fig, axes = plt.subplots(2, len(levels), figsize=(5 * len(levels), 7), squeeze=False)
    methods = ([("erm", None)] if config.erm else []) + [("sam", m) for m in sorted(config.ms, reverse=True)]
    for column, noise in enumerate(levels):
        for index, (method, m) in enumerate(methods):
            curves = []
            for seed in config.seeds:
                run = Run(method, m, noise, seed)
                state = os.path.join(config.out, "runs", run.name, "evaluation.json")
                if os.path.exists(state):
                    curves.append(_read_json(state)["rows"])
            if not curves:
                continue
            color, label = f"C{index}", Run(method, m, noise, 0).label(config.batch_size)
            for row_key, ax, transform in (("train_error_noisy", axes[0][column], lambda v: 100 * (1 - v)),
                                           ("test_error", axes[1][column], lambda v: 100 * v)):
                key = row_key if noise > 0 or row_key != "train_error_noisy" else "train_error"
                per_seed = [{r["epoch"]: transform(r[key]) for r in rows if r.get(key) is not None} for rows in curves]
                epochs = sorted(set.intersection(*(set(c) for c in per_seed)))
                for c in per_seed:
                    ax.plot(sorted(c), [c[e] for e in sorted(c)], color=color, alpha=0.3, linewidth=0.8)
                if epochs:
                    ax.plot(epochs, [np.mean([c[e] for c in per_seed]) for e in epochs], color=color, label=label)
        axes[0][column].set_ylabel("flipped labels fitted (%)" if noise > 0 else "train accuracy (%)")
        axes[1][column].set_ylabel("test error (%)")
        axes[0][column].set_title(f"{round(100 * noise)} % symmetric label noise")
        for ax in axes[:, column]:
            ax.set_xlabel("epoch")
            ax.legend(fontsize=8)
    fig.suptitle("Noisy labels fitted, ERM vs SAM\n(mean over seeds; thin lines: each seed)")
    return outputs.save_figure(fig, path)


# ----------------------------------------------------------------------------------------- rho search
def tune(config):
    """rho for the grid: KerasTuner's grid search over `tune_rhos` (m-SAM with m = `tune_m`, label noise
    `tune_noise`, the grid's data, model and schedule), objective the best validation accuracy of each trial
    (noisy validation labels, as the papers' early stopping). Writes OUT/summary.csv and OUT/summary.md."""
    import keras
    import keras_tuner as kt

    from keras_msam import schedules
    from keras_msam.models import get_model
    from keras_msam.tuning import SAMHyperModel, trial_table
    from recipes.tasks import images

    run = Run("sam", config.tune_m, config.tune_noise, config.tune_seed)
    data = _data_for(config, run)
    print(data.summary())
    keras.utils.set_random_seed(config.tune_seed)
    steps = len(data.y_train) // config.batch_size
    total = steps * config.epochs
    with checking_settings():
        hypermodel = SAMHyperModel(
            lambda: get_model(config.model, data.num_classes, config.width, input_shape=data.image_shape,
                              weight_decay=config.wd),
            batch_size=config.batch_size, rho_range=(min(config.tune_rhos), max(config.tune_rhos)),
            m_choices=[config.tune_m], include_erm=False, include_nsam=config.tune_m == config.batch_size,
            lr_range=config.lr, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            optimizer=lambda lr: keras.optimizers.SGD(schedules.Piecewise(lr, total), momentum=0.9),
            sam_kwargs={"shards_per_pass": config.shards_per_pass},
        )
    space = kt.HyperParameters()
    space.Choice("rho", sorted(config.tune_rhos))  # the values tried: it overrides the hypermodel's range
    tuner = kt.GridSearch(
        hypermodel, objective=kt.Objective("val_accuracy", "max"), hyperparameters=space,
        max_trials=len(config.tune_rhos), directory=config.out, project_name="tuner", seed=config.tune_seed,
    )
    train = images.train_dataset(data.x_train, data.y_train, config.batch_size, config.augment, seed=config.tune_seed,
                                 **images.AUGMENTATION["fashion_mnist"])
    val = images.eval_dataset(data.x_val, data.y_val, 500)
    tuner.search(train, validation_data=val, epochs=config.epochs, steps_per_epoch=steps, verbose=0)
    rows = trial_table(tuner)
    table = ["| rho | m | best val accuracy (noisy labels) | best val error |", "|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: r["rho"]):
        table.append(f"| {row['rho']:g} | {row['m'] or config.batch_size} | {100 * row['objective']:.2f} % | "
                     f"{100 * (1 - row['objective']):.2f} % |")
    best = rows[0]
    text = "\n".join(table) + f"\n\nbest: rho = {best['rho']:g} (val accuracy {100 * best['objective']:.2f} %)\n"
    outputs.write_csv(os.path.join(config.out, "summary.csv"), ("rho", "m", "val_accuracy"),
                      [[r["rho"], r["m"] or config.batch_size, r["objective"]] for r in rows])
    with open(os.path.join(config.out, "summary.md"), "w") as handle:
        handle.write(text)
    print(text, end="")
    return rows


# ----------------------------------------------------------------------------------------- experiments
# The CI-sized pipeline check: 4 runs of 45 steps on a 1000-image subset, the tiny network (not a test of
# the claims).
SMOKE = {
    "model": "tiny", "width": 8, "train_size": 1000, "val_size": 200, "epochs": 3, "batch_size": 64, "ms": (16,), "noise": (0.0, 0.4),
    "seeds": (0,), "eval_every": 1, "sharpness_ms": (16,), "sharpness_points": 64, "verbose": 0,
    "tune_rhos": (0.05, 0.1), "tune_m": 16,
}

EXPERIMENTS = {
    "grid": Experiment(grid, FashionConfig, variants={"smoke": SMOKE},
                       help="the whole grid (resumes; skips finished runs) -> OUT/{results.csv,summary.md,*.png}"),
    "tune": Experiment(tune, FashionConfig, {"out": "results/fashion_mnist_tune"}, variants={"smoke": SMOKE},
                       help="the rho search on the validation split -> OUT/summary.md"),
    "report": Experiment(report, FashionConfig, help="table and plots of the finished runs of OUT"),
}
DEFAULT_EXPERIMENT = "grid"

if __name__ == "__main__":
    from recipes import cli

    sys.exit(cli.main(["fashion_mnist", *sys.argv[1:]]))
