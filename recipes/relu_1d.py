"""A 1 -> 100 -> 1 ReLU network on 12 points: ERM vs n-SAM, and the number of kinks each learns.

The 1D regression of Andriushchenko & Flammarion (2022) (data of Maennel et al., 2018):
x = ([-5.5, -4.5, ..., 5.5]) / 4 + 0.07, y = 0.345 + [-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1];
hidden weights +-2.5 (random sign), hidden biases N(0, 2.5^2), output weights N(0, 4^2), no output bias;
loss 0.5 * sum_i (f(x_i) - y_i)^2, full-batch GD with lr 5e-5; ERM (rho = 0) vs n-SAM (rho = 0.3, the
normalized ascent of the papers' notebook). The paper trains up to 10^6 steps (or loss <= 1e-5).

A kink is a breakpoint t_i = -b_i / w_i of a hidden unit inside [min x, max x] where the function's slope
actually changes: units whose breakpoints coincide (within `merge_tol`) are one kink, with slope change
sum_i a_i |w_i|; it counts when that change exceeds `slope_tol` (default 1: such a bend moves f by 0.25
over one data spacing of 0.25, a quarter of the standard deviation of y). Claim: SAM's function has
fewer kinks. The papers' notebook decays SAM's lr linearly to 0 over the run and keeps ERM's constant
(`lr_decay="sam"`, the default here too); ERM stops once the loss is <= 1e-5.

Commands:
    python -m recipes.relu_1d                          # ERM and SAM, seed 0, 10^6 steps max, into results/relu_1d
    python -m recipes.relu_1d --steps 100000 --seeds 0 1 2 3 4 --json
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from keras_msam import SAMModel  # noqa: E402
from recipes.results import json_safe  # noqa: E402

X_DATA = (np.arange(-5.5, 6.0, 1.0) / 4 + 0.07).reshape(-1, 1)
Y_DATA = (0.345 + np.array([-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1], dtype=np.float64)).reshape(-1, 1)
WIDTH, LR, SAM_RHO, LOSS_STOP, STEPS = 100, 5e-5, 0.3, 1e-5, 1_000_000
LR_DECAY = ("sam", "all", "none")


def make_data():
    """(x [12, 1], y [12, 1]) in float64."""
    return X_DATA.copy(), Y_DATA.copy()


def make_model(width=WIDTH, seed=0):
    """The paper's 1 -> width -> 1 ReLU net: hidden weights +-2.5, biases N(0, 2.5^2), output weights N(0, 4^2),
    no output bias (NumPy RandomState(seed))."""
    if not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be a positive int (hidden units); got width={width!r}.")
    rng = np.random.RandomState(seed)
    hidden_w = 2.5 * rng.choice([-1.0, 1.0], size=(1, width))
    hidden_b = 2.5 * rng.randn(width)
    out_w = 4.0 * rng.randn(width, 1)
    inputs = keras.Input(shape=(1,))
    hidden = keras.layers.Dense(width, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, use_bias=False, name="out")(hidden)
    model = keras.Model(inputs, outputs, name="relu_1d")
    model.set_weights([hidden_w, hidden_b, out_w])
    return model


class HalfSumSquaredError(keras.losses.Loss):
    """0.5 * sum_i (f(x_i) - y_i)^2 over the batch (the papers' loss; not a mean)."""

    def __init__(self, name="half_sum_squared_error"):
        super().__init__(name=name, reduction="sum")

    def call(self, y_true, y_pred):
        return 0.5 * ops.sum(ops.square(y_pred - y_true), axis=-1)


def predict(weights, x):
    """NumPy forward pass of the net with weights [W1 [1, k], b1 [k], W2 [k, 1]]."""
    w1, b1, w2 = weights
    return np.maximum(np.asarray(x, np.float64).reshape(-1, 1) @ w1 + b1, 0.0) @ w2


def count_kinks(weights, x_range=None, slope_tol=1.0, merge_tol=1e-3):
    """Kinks of the learned function inside x_range (default: the data range); returns (count, locations).

    Unit i bends the function at t_i = -b_i / w_i by a slope change of a_i * |w_i| (a_i its output weight);
    breakpoints closer than `merge_tol` are merged (their changes add up), and a merged kink counts when
    |total slope change| > `slope_tol`.
    """
    if slope_tol < 0 or merge_tol < 0:
        raise ValueError(f"slope_tol and merge_tol must be >= 0; got slope_tol={slope_tol}, merge_tol={merge_tol}.")
    w1, b1, w2 = (np.asarray(w, np.float64) for w in weights)
    lo, hi = (X_DATA.min(), X_DATA.max()) if x_range is None else x_range
    w, b, a = w1.reshape(-1), b1.reshape(-1), w2.reshape(-1)
    active = np.abs(w) > 0
    t = -b[active] / w[active]
    change = a[active] * np.abs(w[active])
    inside = (t >= lo) & (t <= hi)
    order = np.argsort(t[inside])
    t, change = t[inside][order], change[inside][order]
    kinks, group_t, group_change = [], [], 0.0
    for ti, ci in zip(t, change):
        if group_t and ti - group_t[-1] > merge_tol:
            if abs(group_change) > slope_tol:
                kinks.append(float(np.mean(group_t)))
            group_t, group_change = [], 0.0
        group_t.append(ti)
        group_change += ci
    if group_t and abs(group_change) > slope_tol:
        kinks.append(float(np.mean(group_t)))
    return len(kinks), kinks


def train(rho=0.0, steps=STEPS, lr=LR, seed=0, width=WIDTH, normalize=True, lr_decay=False, chunk=None,
          loss_stop=LOSS_STOP, progress=False, jit_compile=True):
    """Full-batch GD (rho = 0) or n-SAM (rho > 0) through SAMModel; returns a JSON-ready result dict.

    Args:
        rho: SAM radius (0: ERM); the ascent is over the whole batch (m = 12, n-SAM).
        steps: at most this many steps (a multiple of `chunk`); stops early once loss <= loss_stop.
        lr: GD step size (the paper: 5e-5); lr_decay: linear decay to 0 over `steps` (the paper's SAM runs).
        normalize: normalized ascent rho * g / ||g|| (the papers' notebook) or rho * g.
        chunk: steps per compiled call (and between loss checks); None: steps / 100 or less.
        jit_compile: XLA for the compiled loop.

    Returns:
        dict with rho, lr, steps (taken), seed, loss, kinks, kink_locations, weights, curve, seconds.
    """
    if not rho >= 0:
        raise ValueError(f"rho must be >= 0 (0 is ERM); got rho={rho!r}.")
    if not lr > 0:
        raise ValueError(f"lr must be > 0; got lr={lr!r}.")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int; got steps={steps!r}.")
    chunk = _chunk_for(steps) if chunk is None else int(chunk)
    if steps % chunk:
        raise ValueError(f"steps must be a multiple of chunk={chunk}; got steps={steps}.")
    model = SAMModel(make_model(width, seed), rho=float(rho), normalize=normalize, sam_enabled=rho > 0)
    schedule = keras.optimizers.schedules.PolynomialDecay(lr, steps, end_learning_rate=0.0) if lr_decay else lr
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss=HalfSumSquaredError())
    model.optimizer.build(model.trainable_variables)
    x, y = (tf.constant(a, tf.float32) for a in make_data())
    initial = model.inner.get_weights()
    model.train_step((x, y))  # builds the compiled loss eagerly; undone just below
    model.inner.set_weights(initial)
    model.optimizer.iterations.assign(0)

    @tf.function(jit_compile=jit_compile)
    def run_chunk(n):
        def body(i):
            model.train_step((x, y))
            return i + 1

        return tf.while_loop(lambda i: i < n, body, [tf.constant(0)])

    curve, taken, start = [], 0, time.perf_counter()
    chunks = range(steps // chunk)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc=f"{'SAM' if rho > 0 else 'ERM'} seed {seed} (x{chunk} steps)", file=sys.stderr)
    for _ in chunks:
        run_chunk(tf.constant(chunk))
        taken += chunk
        current = _loss(model.inner.get_weights())
        curve.append((taken, current))
        if not math.isfinite(current) or current <= loss_stop:
            break
    seconds = time.perf_counter() - start
    weights = model.inner.get_weights()
    count, locations = count_kinks(weights)
    return {
        "rho": float(rho),
        "lr": float(lr),
        "lr_decay": bool(lr_decay),
        "normalize": bool(normalize),
        "steps": taken,
        "seed": int(seed),
        "loss": _loss(weights),
        "kinks": count,
        "kink_locations": locations,
        "weights": [w.tolist() for w in weights],
        "curve": {"steps": [c[0] for c in curve], "loss": [c[1] for c in curve]},
        "seconds": seconds,
    }


def compare(seeds=(0,), steps=STEPS, lr=LR, rho=SAM_RHO, lr_decay="sam", out=None, progress=True, **kwargs):
    """ERM vs SAM for each seed; writes relu_1d.{json,png} into `out` (if given); returns the summary.

    lr_decay: "sam" (linear decay to 0 for the SAM runs only, as the papers' notebook), "all" or "none".
    """
    if lr_decay not in LR_DECAY:
        raise ValueError(f"lr_decay must be one of {', '.join(LR_DECAY)}; got lr_decay={lr_decay!r}.")
    runs = []
    for seed in seeds:
        runs.append({"erm": train(0.0, steps, lr, seed, lr_decay=lr_decay == "all", progress=progress, **kwargs),
                     "sam": train(rho, steps, lr, seed, lr_decay=lr_decay != "none", progress=progress, **kwargs)})
    summary = {
        "settings": {"steps": steps, "lr": lr, "rho": rho, "lr_decay": lr_decay, "seeds": list(seeds), **kwargs},
        "kinks_erm": [r["erm"]["kinks"] for r in runs],
        "kinks_sam": [r["sam"]["kinks"] for r in runs],
        "loss_erm": [r["erm"]["loss"] for r in runs],
        "loss_sam": [r["sam"]["loss"] for r in runs],
        "runs": runs,
    }
    if out is not None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "relu_1d.json"), "w") as f:
            json.dump(json_safe(summary), f, indent=1)
        _plot(runs, os.path.join(out, "relu_1d.png"))
    return summary


def _plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = make_data()
    grid = np.linspace(x.min() - 0.05, x.max() + 0.05, 1000)
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        ax.scatter(x, y, color="orange", zorder=3, label="data")
        for key, color, name in (("erm", "tab:red", "ERM"), ("sam", "tab:green", "SAM")):
            res = run[key]
            weights = [np.asarray(w) for w in res["weights"]]
            ax.plot(grid, predict(weights, grid), color=color, lw=2,
                    label=f"{name} (rho={res['rho']:g}): {res['kinks']} kinks, loss {res['loss']:.1e}")
            for t in res["kink_locations"]:
                ax.axvline(t, color=color, alpha=0.25, lw=0.8)
        title = f"seed {run['erm']['seed']}: ERM {run['erm']['steps']} steps, SAM {run['sam']['steps']} steps"
        ax.set(xlabel="x", ylabel="f(x)", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _loss(weights):
    x, y = make_data()
    with np.errstate(all="ignore"):
        r = predict(weights, x) - y
        return float(0.5 * np.sum(r * r))


def _chunk_for(steps):
    target = max(steps // 100, 1)
    return next(k for k in range(target, 0, -1) if steps % k == 0)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m recipes.relu_1d",
        description="1D two-layer ReLU regression: ERM vs n-SAM through keras_msam.SAMModel; counts ReLU kinks.",
    )
    parser.add_argument("--steps", type=int, default=STEPS, help="max steps per run (ERM stops at loss <= 1e-5)")
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--rho", type=float, default=SAM_RHO, help="SAM radius of the SAM run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--lr-decay", choices=LR_DECAY, default="sam",
                        help="linear decay of lr to 0 for: the SAM runs (the papers' notebook), all runs, none")
    parser.add_argument("--out", default=os.path.join("results", "relu_1d"))
    parser.add_argument("--json", action="store_true", help="print the summary (without weights) as JSON last")
    args = parser.parse_args(argv)
    summary = compare(tuple(args.seeds), args.steps, args.lr, args.rho, args.lr_decay, out=args.out,
                      normalize=args.normalize)
    for seed, run in zip(args.seeds, summary["runs"]):
        erm, sam = run["erm"], run["sam"]
        print(f"seed {seed}: ERM {erm['kinks']} kinks (loss {erm['loss']:.2e}, {erm['steps']} steps), "
              f"SAM {sam['kinks']} kinks (loss {sam['loss']:.2e}, {sam['steps']} steps)")
    print(f"wrote {args.out}/relu_1d.png and relu_1d.json")
    if args.json:
        brief = {k: v for k, v in summary.items() if k != "runs"}
        print(json.dumps(json_safe(brief)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
