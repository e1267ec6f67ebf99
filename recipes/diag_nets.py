"""Diagonal linear networks f(x) = <x, u * v> trained by ERM, SGD, n-SAM and 1-SAM through `SAMModel`.

The sparse-regression setting of Andriushchenko & Flammarion (2022), "Towards Understanding
Sharpness-Aware Minimization": n = 20 Gaussian inputs in d = 30 dimensions, a 3-sparse
unit-norm teacher, no label noise, init u0 = alpha, v0 = 0, loss ||X(u * v) - y||^2 / (2n), step c / d.

rho convention (the papers' code, so their rho grids mean the same here):
- n-SAM ascends by rho * grad L with L = ||Xb - y||^2 / (2n): SAMModel rho = rho.
- 1-SAM ascends per example by rho * grad(r_k^2); SAMModel's per-example loss is r_k^2 / 2, so the
  unnormalized SAMModel rho is 2 * rho (normalized ascent: the factor cancels, SAMModel rho = rho).

Every method is one `SAMModel` (ERM and SGD with SAM switched off), compiled once per method and
reused across rhos and restarts; one compiled call runs a whole chunk of steps (`Trainer`).

Commands:
    python -m recipes.diag_nets                           # the rho-grid experiment into results/diag_nets
    python -m recipes.diag_nets --method 1-sam --rho 0.3 --json
    python -m recipes.diag_nets experiment switch --out results/diag_nets   # also: interpolation, implicit_bias
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

from keras_msam import SAMModel, implicit_bias  # noqa: E402
from recipes.results import json_safe  # noqa: E402

METHODS = ("erm", "gd", "sgd", "n-sam", "1-sam")
EXPERIMENTS = ("rho_grid", "switch", "interpolation", "implicit_bias")
RHO_GRID = (0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.9)
DEFAULT_RHO = {"erm": 0.0, "gd": 0.0, "sgd": 0.0, "n-sam": 0.1, "1-sam": 0.3}


# ----------------------------------------------------------------------------------------- data and model
def make_data(n=20, d=30, r=3, n_test=1000, seed=0):
    """The papers' generator: X, X_test ~ N(0, I_d); beta* = |N(0, 1)| on r coordinates, unit norm; y = X beta*.

    Returns (X [n, d], y [n], X_test [n_test, d], y_test [n_test], beta_star [d]), float64, drawn with
    the legacy NumPy global-seed stream exactly as the papers' notebook does.
    """
    for name, value in (("n", n), ("d", d), ("r", r), ("n_test", n_test)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {name}={value!r}.")
    if r > d:
        raise ValueError(f"r (sparsity) must be <= d; got r={r}, d={d}.")
    rng = np.random.RandomState(seed)
    X = rng.multivariate_normal(np.zeros(d), np.eye(d), n)
    X_test = rng.multivariate_normal(np.zeros(d), np.eye(d), n_test)
    beta_star = rng.randn(d)
    beta_star[r:] = 0.0
    beta_star = np.abs(beta_star) / np.linalg.norm(beta_star)
    return X, X @ beta_star, X_test, X_test @ beta_star, beta_star


@keras.saving.register_keras_serializable(package="keras_msam_recipes")
class DiagonalLinear(keras.layers.Layer):
    """x -> <x, u * v> with trainable u (init alpha) and v (init 0); output shape [batch, 1]."""

    def __init__(self, alpha=0.1, **kwargs):
        super().__init__(**kwargs)
        self.alpha = float(alpha)

    def build(self, input_shape):
        d = input_shape[-1]
        self.u = self.add_weight(shape=(d,), initializer=keras.initializers.Constant(self.alpha), name="u")
        self.v = self.add_weight(shape=(d,), initializer="zeros", name="v")

    def call(self, x):
        return ops.sum(x * (self.u * self.v), axis=-1, keepdims=True)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


def make_model(d, alpha):
    """The diagonal linear network on d inputs, initialised at u0 = alpha, v0 = 0 (a built Keras model)."""
    if not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be a positive int (input dimension); got d={d!r}.")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (init scale u0 = alpha); got alpha={alpha!r}.")
    inputs = keras.Input(shape=(int(d),))
    return keras.Model(inputs, DiagonalLinear(alpha, name="diag")(inputs), name="diag_net")


def half_squared_error(y_true, y_pred):
    """(f - y)^2 / 2 per example (its batch mean is ||Xb - y||^2 / (2n))."""
    return 0.5 * ops.mean(ops.square(y_pred - y_true), axis=-1)


def loss(X, y, beta):
    """||X beta - y||^2 / (2n) in float64."""
    residual = np.asarray(X) @ np.asarray(beta, dtype=np.float64) - np.asarray(y)
    return float(residual @ residual / (2 * len(residual)))


# ----------------------------------------------------------------------------------------- training
def sam_settings(method, rho, normalize):
    """(m, SAMModel rho, SAM on?) for a method, with the papers' rho convention (see the module doc)."""
    method = _check_method(method)
    if rho is None or not float(rho) >= 0:
        raise ValueError(f"rho must be a float >= 0; got rho={rho!r}.")
    if method in ("erm", "gd", "sgd"):
        if rho:
            raise ValueError(f"rho applies to 'n-sam' and '1-sam' only; method={method!r} needs rho=0 (got rho={rho}).")
        return None, 0.0, False
    if method == "n-sam":
        return None, float(rho), True
    return 1, float(rho) * (1.0 if normalize else 2.0), True


class Trainer:
    """One compiled SAMModel for one method; `train` runs it from any (u, v), `rho` and `sam_enabled`.

    Speed: `SAMModel.train_step` runs inside one `tf.function` (XLA by default) that loops `chunk` steps in
    a `tf.while_loop` on the in-memory data, so Python is entered once per chunk (where the loss curve is
    recorded), not once per step. This is ~10x faster here than `fit` with `steps_per_execution`, whose
    per-step iterator / Optional plumbing dominates a 30-parameter model (measured on a loaded 2-core
    CPU, 10^4 1-SAM steps: 0.6 s here with XLA, 5.8 s without; `fit(steps_per_execution=100)` 5.4 s
    without XLA, 10.4 s with). The compiled step is reused across rhos and restarts (rho is a variable of
    SAMModel); SAM on and off are one trace each.
    """

    def __init__(self, method, lr, data, alpha=0.1, normalize=False, chunk=100, jit_compile=None):
        self.method = _check_method(method)
        if not lr > 0:
            raise ValueError(f"lr must be > 0 (the step size gamma = c / d); got lr={lr!r}.")
        if not isinstance(chunk, (int, np.integer)) or chunk < 1:
            raise ValueError(f"chunk must be a positive int (steps per compiled call); got chunk={chunk!r}.")
        self.X, self.y, self.X_test, self.y_test = (np.asarray(a, dtype=np.float64) for a in data[:4])
        self.n, self.d = self.X.shape
        self.alpha, self.normalize, self.lr, self.chunk = float(alpha), bool(normalize), float(lr), int(chunk)
        m, _, sam_on = sam_settings(self.method, 0.0, normalize)
        self.model = SAMModel(make_model(self.d, self.alpha), rho=0.0, m=m, normalize=normalize, sam_enabled=sam_on)
        self.model.compile(optimizer=keras.optimizers.SGD(learning_rate=self.lr), loss=half_squared_error)
        self.model.optimizer.build(self.model.trainable_variables)
        x = tf.constant(self.X, tf.float32)
        y = tf.constant(self.y[:, None], tf.float32)
        self.model.train_step((x[:1], y[:1]) if self.method == "sgd" else (x, y))  # builds the loss; reset() undoes

        def steps_on(order, sam_on):  # sam_on: a Python bool, so SAM on and off are two traces
            """len(order) steps; SGD takes example order[i] at step i, the others the full batch."""

            def body(i):
                if self.method == "sgd":
                    self.model.train_step((x[order[i]][None], y[order[i]][None]))
                else:
                    self.model.train_step((x, y))
                return i + 1

            return tf.while_loop(lambda i: i < tf.shape(order)[0], body, [tf.constant(0)])

        if jit_compile is None:  # XLA compiles the batch-1 gather loop of SGD very slowly on CPU (minutes)
            jit_compile = self.method != "sgd"
        self._steps_on = tf.function(steps_on, jit_compile=jit_compile)

    def set_rho(self, rho):
        """Sets the ascent radius from a papers'-convention rho (and SAM on/off for SAM methods)."""
        _, model_rho, sam_on = sam_settings(self.method, rho, self.normalize)
        self.model.rho = model_rho
        self.model.sam_enabled = sam_on and model_rho > 0

    def weights(self):
        u, v = self.model.inner.get_weights()
        return u.astype(np.float64), v.astype(np.float64)

    def reset(self, init=None):
        """Back to u0 = alpha, v0 = 0 (or to the given (u, v))."""
        u, v = (np.full(self.d, self.alpha), np.zeros(self.d)) if init is None else init
        self.model.inner.set_weights([np.asarray(u, np.float32), np.asarray(v, np.float32)])

    def train(self, steps, seed=0, progress=False):
        """`steps` more steps from the current weights; returns [(step, train loss, test loss)] per chunk.

        Stops early (a shorter curve) when the loss is no longer finite.
        """
        if not isinstance(steps, (int, np.integer)) or steps < 1 or steps % self.chunk:
            raise ValueError(f"steps must be a positive multiple of chunk={self.chunk}; got steps={steps!r}.")
        # SGD: one example a step, drawn with replacement (as the papers' code); others ignore the values
        order = np.random.default_rng(seed).integers(self.n, size=steps).astype(np.int32)
        points = []
        chunks = range(0, steps, self.chunk)
        for start in _progress(chunks, progress, f"{self.method} steps/{self.chunk}"):
            self._steps_on(tf.constant(order[start : start + self.chunk]), self.model.sam_enabled)
            points.append((start + self.chunk, *self.evaluate()))
            if not math.isfinite(points[-1][1]):
                break
        return points

    def evaluate(self):
        u, v = self.weights()
        beta = u * v
        with np.errstate(all="ignore"):
            return loss(self.X, self.y, beta), loss(self.X_test, self.y_test, beta)


def run(
    method,
    rho=None,
    lr=None,
    steps=10_000,
    alpha=0.1,
    seed=0,
    normalize=False,
    init=None,
    data=None,
    chunk=None,
    progress=False,
    trainer=None,
):
    """Trains the diagonal net with one method; returns a JSON-ready dict of the results.

    Args:
        method: "erm" / "gd" (full-batch GD), "sgd" (batch 1), "n-sam" (m = n), "1-sam" (m = 1).
        rho: ascent radius in the papers' convention (module doc); None: DEFAULT_RHO[method].
        lr: step size; None: 15 / d.
        steps: number of steps (a multiple of `chunk`).
        alpha: init scale, u0 = alpha, v0 = 0.
        seed: seed of the SGD sampling order (the data always come from `data`).
        normalize: normalized (rho * g / ||g||) or unnormalized (rho * g, the papers' theory) ascent.
        init: (u, v) to start from instead of (alpha, 0), e.g. an ERM solution to fine-tune.
        data: (X, y, X_test, y_test, ...) as from `make_data`; None: `make_data()`.
        chunk: steps per compiled call, also the spacing of the loss curve; None: steps / 100 or less.
        progress: a tqdm bar over the chunks.
        trainer: a `Trainer` for this method to reuse (no recompilation); its lr/alpha/normalize win.

    Returns:
        dict with method, rho, rho_model, m, batch_size, normalize, lr, steps, alpha, seed, train_loss, test_loss,
        beta (= u * v), u, v, curve (steps, train_loss, test_loss lists), diverged, seconds.
    """
    method = _check_method(method)
    rho = DEFAULT_RHO[method] if rho is None else rho
    sam_settings(method, rho, normalize)  # fail on a bad rho before compiling anything
    data = make_data() if data is None else data
    d = np.asarray(data[0]).shape[1]
    if trainer is None:
        lr = 15.0 / d if lr is None else lr
        trainer = Trainer(method, lr, data, alpha, normalize, _chunk_for(steps, chunk))
    elif trainer.method != method:
        raise ValueError(f"trainer was built for method={trainer.method!r}, not method={method!r}.")
    trainer.reset(init)
    trainer.set_rho(rho)
    start = time.perf_counter()
    curve = trainer.train(steps, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    u, v = trainer.weights()
    train_loss, test_loss = trainer.evaluate()
    m, model_rho, _ = sam_settings(method, rho, trainer.normalize)
    return {
        "method": method,
        "rho": float(rho),
        "rho_model": model_rho,
        "m": {"n-sam": trainer.n, "1-sam": 1}.get(method),  # examples per SAM shard (None: no ascent)
        "batch_size": 1 if method == "sgd" else trainer.n,
        "normalize": trainer.normalize,
        "lr": trainer.lr,
        "steps": int(steps),
        "alpha": trainer.alpha,
        "seed": int(seed),
        "train_loss": train_loss,
        "test_loss": test_loss,
        "diverged": not (math.isfinite(train_loss) and len(curve) * trainer.chunk == steps),
        "beta": (u * v).tolist(),
        "u": u.tolist(),
        "v": v.tolist(),
        "curve": {k: [p[i] for p in curve] for i, k in enumerate(("steps", "train_loss", "test_loss"))},
        "seconds": seconds,
    }


# ----------------------------------------------------------------------------------------- experiments
def experiment_rho_grid(out, lr_c=15.0, steps=10_000, alpha=0.1, rhos=RHO_GRID, normalize=False, progress=True):
    """Test loss of ERM, n-SAM and 1-SAM over a rho grid at gamma = lr_c / d; writes rho_grid.{json,csv,png}."""
    data = make_data()
    d = data[0].shape[1]
    lr, chunk = lr_c / d, _chunk_for(steps, None)
    trainers = {m: Trainer(m, lr, data, alpha, normalize, chunk) for m in ("erm", "n-sam", "1-sam")}
    jobs = [("erm", 0.0)] + [(m, r) for r in rhos for m in ("n-sam", "1-sam")]
    results = {"erm": None, "n-sam": [], "1-sam": []}
    for method, rho in _progress(jobs, progress, "rho grid"):
        res = _brief(run(method, rho, steps=steps, data=data, trainer=trainers[method]))
        if method == "erm":
            results["erm"] = res
        else:
            results[method].append(res)
    summary = {
        "experiment": "rho_grid",
        "settings": {"lr_c": lr_c, "lr": lr, "steps": steps, "alpha": alpha, "normalize": normalize,
                     "rhos": list(rhos)},
        **results,
    }
    rows = [("rho", "erm_test", "n_sam_test", "one_sam_test", "n_sam_train", "one_sam_train")]
    for n_sam, one_sam in zip(results["n-sam"], results["1-sam"]):
        rows.append((n_sam["rho"], results["erm"]["test_loss"], n_sam["test_loss"], one_sam["test_loss"],
                     n_sam["train_loss"], one_sam["train_loss"]))
    _write(out, "rho_grid", summary, rows)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.axhline(results["erm"]["test_loss"], color="red", label="ERM (GD)")
    for method, color in (("n-sam", "tab:blue"), ("1-sam", "tab:green")):
        xs = [r["rho"] for r in results[method]]
        ys = [_finite_or_nan(r["test_loss"]) for r in results[method]]
        ax.plot(xs, ys, "o-", color=color, label=method.replace("n-sam", "n-SAM").replace("1-sam", "1-SAM"))
    ax.set(xscale="log", yscale="log", xlabel=r"$\rho$", ylabel="test loss",
           title=f"Diagonal net, $\\gamma = {lr_c:g}/d$, {steps} steps")
    ax.legend()
    _save(fig, out, "rho_grid")
    return summary


def experiment_switch(out, lr_c=1.0, steps=10_000, alpha=0.1, rho=0.1, normalize=True, progress=True):
    """ERM, 1-SAM, ERM -> 1-SAM and 1-SAM -> ERM (switch after `steps`), writes switch.{json,csv,png}.

    All four runs share one m = 1 SAMModel; the switch is `sam_enabled` (one trace for each setting).
    The default ascent is normalized: from an ERM point that already (nearly) interpolates, the
    unnormalized ascent rho * grad(r_k^2) vanishes with the residuals and fine-tuning barely moves.
    """
    summary = _switch_runs(lr_c, steps, alpha, rho, normalize, progress)
    rows = [("run", "phase", "step", "train_loss", "test_loss")]
    for name, res in summary["runs"].items():
        for step, tr, te in zip(res["curve"]["steps"], res["curve"]["train_loss"], res["curve"]["test_loss"]):
            rows.append((name, "", step, tr, te))
    _write(out, "switch", summary, rows)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"ERM": ("red", "-", 2.5), "1-SAM": ("tab:green", "-", 2.5),
              "ERM -> 1-SAM": ("orange", "--", 1.5), "1-SAM -> ERM": ("tab:cyan", "--", 1.5)}
    for name, res in summary["runs"].items():
        color, style, width = styles[name]
        for ax, key in zip(axes, ("train_loss", "test_loss")):
            ax.plot(res["curve"]["steps"], [_finite_or_nan(v) for v in res["curve"][key]], color=color, ls=style,
                    lw=width, label=name)
    for ax, key in zip(axes, ("train loss", "test loss")):
        ax.axvline(steps, color="gray", ls=":")
        ax.set(xscale="log", yscale="log", xlabel="step", ylabel=key)
    axes[1].legend()
    fig.suptitle(f"Switching at step {steps}: $\\gamma = {lr_c:g}/d$, $\\rho = {rho:g}$"
                 f" ({'normalized' if normalize else 'unnormalized'} 1-SAM)")
    _save(fig, out, "switch")
    return summary


def experiment_interpolation(out, lr_c=1.0, steps=10_000, alpha=0.1, rho=0.1, normalize=True, points=41,
                             progress=True):
    """Train/test loss along w(a) = (1 - a) w_ERM + a w_ERM->1-SAM (weights u, v), a in [-0.5, 1.5]."""
    data = make_data()
    trainer = Trainer("1-sam", lr_c / data[0].shape[1], data, alpha, normalize, _chunk_for(steps, None))
    stages = _progress(["ERM", "ERM -> 1-SAM"], progress, "interpolation")
    trainer.reset()
    endpoints = []
    for stage in stages:
        trainer.set_rho(0.0 if stage == "ERM" else rho)
        trainer.train(steps)
        endpoints.append(trainer.weights())
    (u1, v1), (u2, v2) = endpoints
    coefs = np.linspace(-0.5, 1.5, points)
    train, test = [], []
    for a in coefs:
        beta = ((1 - a) * u1 + a * u2) * ((1 - a) * v1 + a * v2)
        train.append(loss(data[0], data[1], beta))
        test.append(loss(data[2], data[3], beta))
    inside = (coefs >= 0) & (coefs <= 1)
    summary = {
        "experiment": "interpolation",
        "settings": {"lr_c": lr_c, "steps_each": steps, "alpha": alpha, "rho": rho, "normalize": normalize},
        "a": coefs.tolist(),
        "train_loss": train,
        "test_loss": test,
        "max_train_loss_on_segment": float(np.max(np.asarray(train)[inside])),
        "endpoint_test_loss": {"ERM": test[int(np.argmin(abs(coefs)))],
                               "ERM -> 1-SAM": test[int(np.argmin(abs(coefs - 1)))]},
    }
    _write(out, "interpolation", summary, [("a", "train_loss", "test_loss"), *zip(coefs.tolist(), train, test)])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(coefs, train, color="tab:blue", label="train loss")
    ax.plot(coefs, test, color="tab:red", label="test loss")
    for x in (0, 1):
        ax.axvline(x, color="gray", ls=":")
    ax.set(yscale="log", xlabel="a  (0: ERM, 1: ERM -> 1-SAM)", ylabel="loss", title="Linear interpolation of (u, v)")
    ax.legend()
    _save(fig, out, "interpolation")
    return summary


def experiment_implicit_bias(out, lr_c=1.0, steps=10_000, alpha=0.1, rho=0.1, normalize=False, progress=True):
    """Effective scale of ERM, n-SAM and 1-SAM solutions (Theorem 1): writes implicit_bias.{json,csv,png}.

    Per coordinate, a_i = sqrt(u_i^2 - v_i^2) / 2 (= alpha / 2 for ERM's gradient flow, shrunk by SAM);
    and the scalar effective alpha: the min-phi_alpha interpolator closest to the learned beta.
    Small steps (gamma = 1 / d) and the unnormalized ascent: the theorem's regime.
    """
    data = make_data()
    lr, chunk = lr_c / data[0].shape[1], _chunk_for(steps, None)
    results = {}
    for method in _progress(["erm", "n-sam", "1-sam"], progress, "implicit bias"):
        rho_m = 0.0 if method == "erm" else rho
        res = run(method, rho_m, lr, steps, alpha, normalize=normalize, data=data, chunk=chunk)
        res.update(effective_alphas(res, data))
        res["alpha_per_coordinate"] = implicit_bias.alpha_per_coordinate(res["u"], res["v"]).tolist()
        results[method] = _brief(res)
    summary = {
        "experiment": "implicit_bias",
        "settings": {"lr_c": lr_c, "steps": steps, "alpha": alpha, "alpha_phi_at_init": alpha / 2, "rho": rho,
                     "normalize": normalize},
        **results,
    }
    rows = [("method", "test_loss", "effective_alpha", "alpha_per_coordinate_geomean")]
    rows += [(m, r["test_loss"], r["effective_alpha"], r["alpha_per_coordinate_geomean"]) for m, r in results.items()]
    _write(out, "implicit_bias", summary, rows)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, color in (("erm", "red"), ("n-sam", "tab:blue"), ("1-sam", "tab:green")):
        res = results[method]
        ax.plot(np.arange(1, data[0].shape[1] + 1), res["alpha_per_coordinate"], "o-", ms=3, color=color,
                label=f"{method}: geomean {res['alpha_per_coordinate_geomean']:.3g}, fit {res['effective_alpha']:.3g}")
    ax.axhline(alpha / 2, color="gray", ls=":", label=f"init: alpha/2 = {alpha / 2:g}")
    ax.set(yscale="log", xlabel="coordinate i (1-3: support of beta*)", ylabel=r"$\sqrt{u_i^2 - v_i^2}\,/\,2$",
           title=f"Effective scale, $\\gamma = {lr_c:g}/d$, $\\rho = {rho:g}$")
    ax.legend(fontsize=8)
    _save(fig, out, "implicit_bias")
    return summary


def _switch_runs(lr_c, steps, alpha, rho, normalize, progress):
    data = make_data()
    trainer = Trainer("1-sam", lr_c / data[0].shape[1], data, alpha, normalize, _chunk_for(steps, None))
    plans = {"ERM": (0.0, 0.0), "1-SAM": (rho, rho), "ERM -> 1-SAM": (0.0, rho), "1-SAM -> ERM": (rho, 0.0)}
    runs = {}
    for name in _progress(list(plans), progress, "switch"):
        trainer.reset()
        curve = []
        for phase, phase_rho in enumerate(plans[name]):
            trainer.set_rho(phase_rho)
            curve += [(s + phase * steps, tr, te) for s, tr, te in trainer.train(steps)]
        u, v = trainer.weights()
        train_loss, test_loss = trainer.evaluate()
        runs[name] = {
            "train_loss": train_loss,
            "test_loss": test_loss,
            "beta": (u * v).tolist(),
            "u": u.tolist(),
            "v": v.tolist(),
            "curve": {k: [p[i] for p in curve] for i, k in enumerate(("steps", "train_loss", "test_loss"))},
        }
    return {
        "experiment": "switch",
        "settings": {"lr_c": lr_c, "steps_each": steps, "alpha": alpha, "rho": rho, "normalize": normalize},
        "runs": runs,
    }


# ----------------------------------------------------------------------------------------- helpers
def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(repr(m) for m in METHODS)}; got method={method!r}.")
    return method


def _chunk_for(steps, chunk):
    """Steps per compiled call: `chunk` if given, else the largest divisor of steps <= max(steps // 100, 1)."""
    if chunk is not None:
        return int(chunk)
    target = max(int(steps) // 100, 1)
    return next(k for k in range(target, 0, -1) if steps % k == 0)


def _brief(result):
    """A run's result without the per-coordinate vectors (for grid summaries)."""
    return {k: v for k, v in result.items() if k not in ("u", "v")}


def _progress(items, enabled, desc):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, file=sys.stderr)


def _finite_or_nan(value):
    return value if value is not None and math.isfinite(value) else float("nan")


def _write(out, name, summary, rows):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(json_safe(summary), f, indent=1)
    with open(os.path.join(out, f"{name}.csv"), "w") as f:
        for row in rows:
            f.write(",".join(str(json_safe(v)) if not isinstance(v, str) else v for v in row) + "\n")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out, name):
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{name}.png"), dpi=120)
    _pyplot().close(fig)


def effective_alphas(result, data=None):
    """The implicit-bias reading of a run: scalar effective alpha and the per-coordinate scale sqrt(u^2 - v^2)/2."""
    data = make_data() if data is None else data
    a_scalar, distance = implicit_bias.effective_alpha(result["beta"], data[0], data[1])
    per_coordinate = implicit_bias.alpha_per_coordinate(result["u"], result["v"])
    return {
        "effective_alpha": a_scalar,
        "distance": distance,
        "alpha_per_coordinate_geomean": float(np.exp(np.mean(np.log(np.maximum(per_coordinate, 1e-300))))),
    }


# ----------------------------------------------------------------------------------------- CLI
def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m recipes.diag_nets",
        description="Diagonal linear networks with ERM / SGD / n-SAM / 1-SAM (keras_msam.SAMModel). "
        "With no arguments: runs the rho-grid experiment into results/diag_nets. "
        "Named experiments: `experiment {rho_grid,switch,interpolation,implicit_bias} --out DIR`.",
    )
    parser.add_argument("--method", choices=METHODS, default="1-sam")
    parser.add_argument("--rho", type=float, default=None, help="papers' convention; default per method")
    parser.add_argument("--lr-c", type=float, default=15.0, help="step size gamma = c / d")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.1, help="init u0 = alpha, v0 = 0")
    parser.add_argument("--seed", type=int, default=0, help="SGD sampling seed")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=False,
                        help="normalized ascent rho * g / ||g|| (default: unnormalized, as the papers' theory)")
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON on the last line")
    parser.add_argument("--progress", action="store_true", help="Keras progress bar for the run")
    return parser


def _experiment_parser():
    parser = argparse.ArgumentParser(prog="python -m recipes.diag_nets experiment")
    parser.add_argument("name", choices=EXPERIMENTS)
    parser.add_argument("--out", default=os.path.join("results", "diag_nets"))
    parser.add_argument("--steps", type=int, default=10_000, help="steps per run (per phase for switch)")
    parser.add_argument("--lr-c", type=float, default=None, help="default: 15 (rho_grid), 1 (the others)")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--rho", type=float, default=0.1, help="rho of switch / interpolation / implicit_bias")
    parser.add_argument("--rhos", type=float, nargs="+", default=list(RHO_GRID), help="rho_grid grid")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="default: normalized for switch / interpolation, unnormalized otherwise")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    return parser


def run_experiment(name, out, steps=10_000, lr_c=None, alpha=0.1, rho=0.1, rhos=RHO_GRID, normalize=None,
                   progress=True):
    """Runs a named experiment (EXPERIMENTS) and writes its JSON, CSV and PNG into `out`."""
    if name == "rho_grid":
        return experiment_rho_grid(out, 15.0 if lr_c is None else lr_c, steps, alpha, tuple(rhos),
                                   bool(normalize), progress)
    if name == "switch":
        return experiment_switch(out, 1.0 if lr_c is None else lr_c, steps, alpha, rho,
                                 True if normalize is None else normalize, progress)
    if name == "interpolation":
        return experiment_interpolation(out, 1.0 if lr_c is None else lr_c, steps, alpha, rho,
                                        True if normalize is None else normalize, progress=progress)
    if name == "implicit_bias":
        return experiment_implicit_bias(out, 1.0 if lr_c is None else lr_c, steps, alpha, rho, bool(normalize),
                                        progress)
    raise ValueError(f"experiment name must be one of {', '.join(EXPERIMENTS)}; got {name!r}.")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        argv = ["experiment", "rho_grid"]
    if argv[0] == "experiment":
        args = _experiment_parser().parse_args(argv[1:])
        start = time.perf_counter()
        summary = run_experiment(args.name, args.out, args.steps, args.lr_c, args.alpha, args.rho, args.rhos,
                                 args.normalize)
        print(f"{args.name}: wrote {args.out}/{args.name}.png, .json, .csv in {time.perf_counter() - start:.1f} s")
        if args.name == "rho_grid":
            _print_grid(summary)
        if args.json:
            print(json.dumps(json_safe(summary)))
        return 0
    args = _parser().parse_args(argv)
    data = make_data()
    try:
        result = run(args.method, args.rho, args.lr_c / data[0].shape[1], args.steps, args.alpha, args.seed,
                     args.normalize, data=data, progress=args.progress)
    except ValueError as err:
        _parser().error(str(err))
    print(f"{result['method']} rho={result['rho']:g} lr={result['lr']:.4g} steps={result['steps']}: "
          f"train loss {result['train_loss']:.3e}, test loss {result['test_loss']:.3e} ({result['seconds']:.1f} s)")
    if args.json:
        print(json.dumps(json_safe(result)))
    return 0


def _print_grid(summary):
    print(f"ERM test loss {summary['erm']['test_loss']:.3e}")
    print(f"{'rho':>7} {'n-SAM test':>12} {'1-SAM test':>12}")
    for n_sam, one_sam in zip(summary["n-sam"], summary["1-sam"]):
        n_test, one_test = _finite_or_nan(n_sam["test_loss"]), _finite_or_nan(one_sam["test_loss"])
        print(f"{n_sam['rho']:>7g} {n_test:>12.3e} {one_test:>12.3e}")


if __name__ == "__main__":
    sys.exit(main())
