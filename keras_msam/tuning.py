"""Hyperparameter search over SAM's rho and m (and the learning rate) with KerasTuner.

    hypermodel = SAMHyperModel(build_model, batch_size=128, rho_range=(1e-3, 1.0))
    tuner = make_tuner("bayesian", hypermodel, objective="val_loss", max_trials=20, directory="tune")
    tuner.search(x, y, validation_data=(x_val, y_val), epochs=10)   # batch_size comes from the hypermodel
    best_sam_settings(tuner)   # {"method": "sam", "rho": 0.05, "m": 16, "lr": 0.1, "objective": ..., ...}

The search space (KerasTuner hyperparameter names):
- "method": "sam" or "erm" (only when `include_erm`); ERM is a `SAMModel` with SAM switched off
  (`sam_enabled=False`: one gradient per step, the same logged metrics with sharpness 0).
- "rho": log-uniform in `rho_range` (active for "sam").
- "m": examples per shard, from the divisors of the per-replica batch `batch_size / num_replicas`
  (active for "sam"); m equal to the per-replica batch is n-SAM and is built as `m=None`, which also
  covers a smaller last batch.
- "lr": log-uniform in `lr_range` (or fixed, when `lr_range` is a single number).
"""

import inspect
import math

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from keras_msam.sam_model import SAMModel

TUNERS = {
    "random": kt.RandomSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
}


# ----------------------------------------------------------------------------------- m choices
def per_replica_batch(batch_size, num_replicas=None):
    """The batch one replica sees: `batch_size / num_replicas` (replicas of the current strategy by default)."""
    if num_replicas is None:
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (the global batch); got batch_size={batch_size!r}.")
    if not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas must be a positive int; got num_replicas={num_replicas!r}.")
    if batch_size % num_replicas:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by num_replicas={num_replicas}: the replicas would see "
            f"unequal batches. Use a batch_size that is a multiple of {num_replicas}."
        )
    return batch_size // num_replicas


def m_divisors(batch):
    """All m that split a batch of `batch` examples into equal shards, ascending (1, ..., batch)."""
    return [m for m in range(1, batch + 1) if batch % m == 0]


def m_choices_for(batch_size, num_replicas=None, m_choices="divisors", include_nsam=True):
    """The values of the "m" hyperparameter: divisors of the per-replica batch b; b itself is n-SAM.

    Args:
        batch_size: the global batch size given to `fit`.
        num_replicas: replicas the batch is split over (default: those of the current strategy).
        m_choices: "divisors" (all divisors of b) or a list of ints, each of which must divide b.
        include_nsam: keep m = b (n-SAM, one shard per replica batch); False drops it.
    """
    batch = per_replica_batch(batch_size, num_replicas)
    if isinstance(m_choices, str):
        if m_choices != "divisors":
            raise ValueError(f'm_choices must be "divisors" or a list of ints; got m_choices={m_choices!r}.')
        values = m_divisors(batch)
    else:
        values = sorted({int(m) for m in m_choices})
        bad = [m for m in values if m < 1 or batch % m]
        if bad:
            raise ValueError(
                f"m_choices {bad} do not divide the per-replica batch of {batch} (batch_size={batch_size} over "
                f"{batch_size // batch} replica(s)); choose among its divisors {m_divisors(batch)}."
            )
    if not include_nsam:
        values = [m for m in values if m != batch]
    if not values:
        raise ValueError(
            f"No m left to search: m_choices={m_choices!r} with include_nsam={include_nsam} and a per-replica "
            f"batch of {batch}. Add a divisor of {batch} smaller than {batch}, or set include_nsam=True."
        )
    return values


def _check_range(value, name):
    low, high = (value, value) if isinstance(value, (int, float)) else value
    if not (0 < low <= high):
        raise ValueError(
            f"{name} must be (low, high) with 0 < low <= high, or one positive number; got {name}={value!r}."
        )
    return float(low), float(high)


# ----------------------------------------------------------------------------------- the hypermodel
class SAMHyperModel(kt.HyperModel):
    """Builds a compiled `SAMModel` around `build_model()` with rho, m and the learning rate drawn from `hp`.

    Args:
        build_model: function returning an uncompiled inner Keras model; it may take the `hp` argument
            to tune the architecture too (`build_model(hp)`).
        batch_size: the global batch size; `fit` uses it, and m is chosen among divisors of its
            per-replica share.
        rho_range: (low, high), rho is searched log-uniformly in it.
        m_choices: "divisors" or a list of ints dividing the per-replica batch.
        include_erm: also try plain ERM ("method" = "erm").
        include_nsam: also try n-SAM (m = the per-replica batch, built as m=None).
        lr_range: (low, high) searched log-uniformly, or one number for a fixed learning rate.
        loss, metrics: passed to `compile`.
        optimizer: function lr -> Keras optimizer; default SGD with `momentum`.
        momentum: momentum of the default SGD optimizer.
        num_replicas: replicas the batch is split over; default: those of the strategy in scope when the
            hypermodel is created (build the tuner with `distribution_strategy` of the same size).
        sam_kwargs: further `SAMModel` arguments (normalize, ascent_steps, adaptive, exclude, ...).
    """

    def __init__(
        self,
        build_model,
        batch_size,
        rho_range=(1e-3, 1.0),
        m_choices="divisors",
        include_erm=True,
        include_nsam=True,
        lr_range=(1e-3, 1e-1),
        loss="mse",
        metrics=None,
        optimizer=None,
        momentum=0.0,
        num_replicas=None,
        sam_kwargs=None,
        name=None,
        tunable=True,
    ):
        super().__init__(name=name, tunable=tunable)
        if not callable(build_model):
            raise TypeError(f"build_model must be a function returning a Keras model; got {build_model!r}.")
        self.build_model = build_model
        self.batch_size = batch_size
        self.num_replicas = num_replicas or tf.distribute.get_strategy().num_replicas_in_sync
        self.replica_batch = per_replica_batch(batch_size, self.num_replicas)
        self.m_values = m_choices_for(batch_size, self.num_replicas, m_choices, include_nsam)
        self.rho_range = _check_range(rho_range, "rho_range")
        self.lr_range = _check_range(lr_range, "lr_range")
        self.include_erm = bool(include_erm)
        self.loss = loss
        self.metrics = metrics
        self.optimizer = optimizer or (lambda lr: keras.optimizers.SGD(lr, momentum=momentum))
        self.sam_kwargs = dict(sam_kwargs or {})
        for key in ("model", "rho", "m", "sam_enabled"):
            if key in self.sam_kwargs:
                raise ValueError(f"sam_kwargs must not set {key!r}: the search chooses it. Remove it from sam_kwargs.")

    def sam_settings(self, hp):
        """Declares the SAM hyperparameters on `hp`; returns {"method", "rho", "m", "lr"} for SAMModel."""
        method = hp.Choice("method", ["sam", "erm"]) if self.include_erm else "sam"
        if self.include_erm:
            with hp.conditional_scope("method", ["sam"]):  # rho and m mean nothing for ERM
                rho, m = self._declare_rho_m(hp)
        else:
            rho, m = self._declare_rho_m(hp)
        if method == "sam":
            rho, m = float(rho), (None if m == self.replica_batch else int(m))
        else:
            rho, m = 0.0, None
        low, high = self.lr_range
        lr = hp.Float("lr", low, high, sampling="log") if low < high else hp.Fixed("lr", low)
        return {"method": method, "rho": rho, "m": m, "lr": lr}

    def _declare_rho_m(self, hp):
        low, high = self.rho_range
        rho = hp.Float("rho", low, high, sampling="log") if low < high else hp.Fixed("rho", low)
        m = hp.Choice("m", self.m_values, ordered=True) if len(self.m_values) > 1 else hp.Fixed("m", self.m_values[0])
        return rho, m

    def build(self, hp):
        self._check_replicas()
        settings = self.sam_settings(hp)
        takes_hp = len(inspect.signature(self.build_model).parameters) > 0
        inner = self.build_model(hp) if takes_hp else self.build_model()
        model = SAMModel(
            inner,
            rho=settings["rho"],
            m=settings["m"],
            sam_enabled=settings["method"] == "sam",
            **self.sam_kwargs,
        )
        model.compile(optimizer=self.optimizer(settings["lr"]), loss=self.loss, metrics=self.metrics)
        return model

    def fit(self, hp, model, *args, **kwargs):
        """`model.fit` with this hypermodel's batch size: given to `fit` for arrays, checked for a dataset."""
        x = args[0] if args else kwargs.get("x")
        if isinstance(x, tf.data.Dataset):
            batch = tf.compat.dimension_value(keras.tree.flatten(x.element_spec)[0].shape[0])
            if batch is not None and batch != self.batch_size:
                raise ValueError(
                    f"The dataset yields batches of {batch}, but SAMHyperModel(batch_size={self.batch_size}) chose "
                    f"the m values for batches of {self.batch_size}. Batch the dataset by {self.batch_size}."
                )
            kwargs.setdefault("shuffle", False)  # a dataset shuffles itself; Keras would warn
        else:
            if kwargs.setdefault("batch_size", self.batch_size) != self.batch_size:
                raise ValueError(
                    f"search(batch_size={kwargs['batch_size']}) differs from "
                    f"SAMHyperModel(batch_size={self.batch_size}), which the m choices were made for. "
                    "Pass the same batch_size, or drop it from search()."
                )
            self._check_last_batch(model, x)
        return model.fit(*args, **kwargs)

    def _check_last_batch(self, model, x):
        """SAMModel cannot split a last, partial batch smaller than m: say so before training starts."""
        if x is None or model.m is None or not model.sam_enabled:
            return
        num_examples = int(np.shape(keras.tree.flatten(x)[0])[0])
        last = (num_examples % self.batch_size) // self.num_replicas
        if num_examples % self.batch_size and model.m > last:
            raise ValueError(
                f"{num_examples} examples in batches of {self.batch_size} end with a batch of "
                f"{num_examples % self.batch_size}, which m={model.m} examples per shard cannot split. Pass a "
                f"tf.data.Dataset batched with drop_remainder=True, or a number of examples that batch_size "
                "divides."
            )

    def _check_replicas(self):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if tf.distribute.has_strategy() and replicas != self.num_replicas:
            raise ValueError(
                f"The model is built under a strategy with {replicas} replicas, but the m choices were made for "
                f"num_replicas={self.num_replicas}. Pass SAMHyperModel(..., num_replicas={replicas})."
            )


# ----------------------------------------------------------------------------------- tuners and results
def make_tuner(kind, hypermodel, objective="val_loss", max_trials=10, max_epochs=None, **kwargs):
    """A KerasTuner tuner over `hypermodel` whose trials also show in TensorBoard's HParams dashboard.

    Args:
        kind: "random", "bayesian" or "hyperband".
        objective: metric to minimize/maximize, e.g. "val_loss" (a `kt.Objective` for a custom direction).
        max_trials: trials of "random" and "bayesian" (Hyperband derives its own from `max_epochs`).
        max_epochs: epochs of Hyperband's longest runs (required for "hyperband", unused otherwise).
        **kwargs: further tuner arguments: directory, project_name, seed, overwrite, executions_per_trial, ...
    """
    from keras_msam.tensorboard import with_hparams  # TensorBoard plumbing lives in its own module

    if kind not in TUNERS:
        raise ValueError(f"Unknown tuner kind={kind!r}; valid: {sorted(TUNERS)}.")
    if kind == "hyperband":
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(
                f"Hyperband needs max_epochs, a positive int (its longest run); got max_epochs={max_epochs!r}."
            )
        kwargs["max_epochs"] = max_epochs
    else:
        kwargs["max_trials"] = max_trials
    return with_hparams(TUNERS[kind])(hypermodel, objective=objective, **kwargs)


def settings_of(hp, replica_batch=None):
    """{"method", "rho", "m"} of a trial's hyperparameters (ERM: rho 0, m None; m = replica batch -> None)."""
    values = hp.values
    method = values.get("method", "sam")
    if method == "erm":
        return {"method": "erm", "rho": 0.0, "m": None}
    m = values.get("m")
    m = None if m is None or m == replica_batch else int(m)
    return {"method": method, "rho": float(values["rho"]), "m": m}


def trial_table(tuner, num_trials=None):
    """One dict per finished trial, best first: trial_id, method, rho, m, lr, objective."""
    replica_batch = getattr(tuner.hypermodel, "replica_batch", None)
    trials = tuner.oracle.get_best_trials(num_trials or len(tuner.oracle.trials))
    rows = []
    for trial in trials:
        hp = trial.hyperparameters
        row = {"trial_id": trial.trial_id, **settings_of(hp, replica_batch)}
        row["lr"] = float(hp.values["lr"]) if "lr" in hp.values else None
        row["objective"] = float(trial.score) if trial.score is not None else math.nan
        rows.append(row)
    return rows


def best_sam_settings(tuner):
    """The best trial's {"method", "rho", "m", "lr", "objective", "trial_id"}; m None is n-SAM (or ERM).

    `objective` is KerasTuner's score of the trial: the objective at its best epoch.
    """
    rows = trial_table(tuner, num_trials=1)
    if not rows:
        raise ValueError("The tuner has no finished trial yet: run tuner.search(...) first.")
    return rows[0]
