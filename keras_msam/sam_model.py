"""`SAMModel`: m-SAM as a Keras `Model` that wraps any built Keras model.

One training step on a (per-replica) batch of b examples split into shards S_1..S_k of m examples:

    g_j   = grad L_{S_j}(w)                      (loss over the shard, + regularisation)
    eps_j = rho * g_j / ||g_j||                  (see `ascent.py` for the variants)
    G_j   = grad L_{S_j}(w + eps_j)
    w    <- optimizer(sum_j |S_j| / b * G_j)

The step runs the shards (`shards.run_shards`, in a `layouts.Layout`), applies the weighted sum of the
G_j, and logs. All model calls are `stateless_call`s, so nothing is ever assigned to the weights
during the ascent; BatchNorm statistics and RNG seeds come only from the passes at w, merged as if
the shards had run one after another. `fit` and `evaluate` run the steps through
`train_function.StepFunction` (one compiled step per batch shape; layouts timed under
`shards_per_pass="auto"`).
"""

import contextlib
import math
import numbers
import re
import warnings

import keras
import tensorflow as tf
from keras import tree
from keras.src.losses import loss as loss_module
from keras.src.trainers.data_adapters import data_adapter_utils

from keras_msam import ascent, layouts, shards, train_function, vectorization

SAM_LOGS = ("sam_loss", "sharpness", "grad_norm", "eps_norm", "grad_cosine", "rho", "m")
_SEED_KEY = "inner_seed_"


def _check_rho(rho):
    """rho as a float >= 0 (finite), or the schedule itself."""
    if callable(rho):
        return rho
    try:
        value = float(rho)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"rho must be a finite float >= 0 or a schedule (callable of the step); got rho={rho!r}.")
    return value


def _check_positive_int(value, name, hint):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int ({hint}); got {name}={value!r}.")
    return int(value)


def _compile_patterns(exclude):
    """`exclude` as compiled regexes: a string is one pattern, a list or tuple several."""
    patterns = [exclude] if isinstance(exclude, str) else list(exclude or ())
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, TypeError) as error:
            raise ValueError(
                f"exclude must hold regular expressions matched against variable paths; {pattern!r} is not "
                f"one ({error}). Example: exclude=[r'bias', r'batch_normalization']."
            ) from None
    return tuple(compiled)


def check_sam_model(model, user):
    """TypeError naming `user` (a callback or tool) unless `model` is a SAMModel."""
    if not isinstance(model, SAMModel):
        raise TypeError(
            f"{user} needs a keras_msam.SAMModel; got a {type(model).__name__}. "
            "Wrap the network: SAMModel(model, rho=..., m=...)."
        )


def _cosine(a, b):
    dot = tf.add_n([tf.reduce_sum(tf.cast(x, tf.float32) * tf.cast(y, tf.float32)) for x, y in zip(a, b)])
    norms = tf.cast(ascent.global_norm(a), tf.float32) * tf.cast(ascent.global_norm(b), tf.float32)
    return dot / (norms + 1e-30)


def _add(weights, delta):
    return [w + tf.cast(d, w.dtype) for w, d in zip(weights, delta)]


@keras.saving.register_keras_serializable(package="keras_msam")
class SAMModel(keras.Model):
    """Trains a wrapped Keras model with m-SAM; `evaluate`, `predict` and `call` are the wrapped model's.

    Args:
        model: a built Keras model (Sequential, functional or subclassed).
        rho: ascent radius, a finite float >= 0 or a schedule `rho(step)` (e.g. a Keras
            `LearningRateSchedule`), evaluated on `optimizer.iterations`.
        m: examples per shard (per replica); None means one shard = the whole per-replica batch.
            A batch that m does not divide ends with a smaller shard, weighted by its size; a batch
            smaller than m (the short last batch of an epoch) is one shard. m larger than the first
            (full) batch of training is an error.
        normalize: eps = rho * g / ||g|| (True) or rho * g (False, the papers' theory).
        ascent_steps: k > 1 takes k ascent steps of size rho * step_mult.
        step_mult: step size of one ascent step, as a multiple of rho.
        adaptive: ASAM, the ascent scaled elementwise by |w| + adaptive_eta.
        project: project eps onto the rho-ball after every ascent step. None (default): the
            normalized ascent is projected when a step can leave the ball (ascent_steps > 1 or
            step_mult > 1), the unnormalized one never (the papers' diagonal-net code); True with
            normalize=False is the papers' deep-net code (rho * g, then projected).
        exclude: a regular expression, or a list of them; trainable variables whose `path` matches
            one are not perturbed (and not counted in ||g||), e.g. `exclude=[r"batch_normalization", r"bias"]`.
        bn_in_ascent: "batch" (ghost BN: the ascent gradient uses the shard's batch statistics) or
            "frozen" (BatchNorm in inference mode for the ascent gradient, with the moving statistics
            of the start of the step; the statistics are then updated by a training-mode pass at w).
            The perturbed pass always uses the shard's batch statistics, and moving statistics only
            ever come from passes at w, merged as if ERM had run the shards one after another.
            Dropout: each shard draws its own mask, and the same mask serves its pass at w and at
            w + eps (sharpness is measured on one sub-network).
        shards_per_pass: how the shards of a step run (`keras_msam.layouts`). "auto": the first steps
            of `fit` time up to 3 candidate layouts and keep the fastest (`model.shard_layouts`,
            `model.layout_reports`); 1: plain passes, one shard at a time; p > 1: vectorized passes of
            p shards (p must divide the number of shards); None: all shards in one vectorized pass.
            Vectorized passes only for models whose layers are all in `keras_msam.vectorization`'s
            allowlist: any other model runs plain passes under "auto", and a vectorized setting is an error.
        sam_enabled: start with SAM on (True) or off (plain ERM step until switched on).
    """

    def __init__(
        self,
        model,
        rho=0.05,
        m=None,
        normalize=True,
        ascent_steps=1,
        step_mult=1.0,
        adaptive=False,
        adaptive_eta=0.0,
        exclude=(),
        bn_in_ascent="batch",
        shards_per_pass="auto",
        sam_enabled=True,
        project=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model) or not model.built:
            raise ValueError(
                "SAMModel needs a built Keras model: give it a keras.Input, or call model.build(input_shape) "
                f"or model(x) once before wrapping it; got {model!r}."
            )
        rho = _check_rho(rho)
        self.m = None if m is None else _check_positive_int(m, "m", "examples per shard, or None for the whole batch")
        self.ascent = ascent.Ascent(
            normalize=bool(normalize),
            steps=_check_positive_int(ascent_steps, "ascent_steps", "ascent steps per shard"),
            step_mult=float(step_mult),
            adaptive=bool(adaptive),
            eta=float(adaptive_eta),
            project=None if project is None else bool(project),
        )
        if not self.ascent.step_mult > 0:
            raise ValueError(f"step_mult must be > 0; got step_mult={step_mult!r}.")
        if not self.ascent.eta >= 0:
            raise ValueError(f"adaptive_eta must be >= 0; got adaptive_eta={adaptive_eta!r}.")
        if bn_in_ascent not in ("batch", "frozen"):
            raise ValueError(f"bn_in_ascent must be 'batch' (ghost BN) or 'frozen' (inference mode); got {bn_in_ascent!r}.")
        if shards_per_pass not in (None, "auto"):
            _check_positive_int(shards_per_pass, "shards_per_pass", "'auto', None or shards per vectorized pass")
        self.unvectorizable = vectorization.first_unsupported(model)  # which layer rules vectorized passes out
        if self.unvectorizable is not None and shards_per_pass not in ("auto", 1):
            raise ValueError(
                f"shards_per_pass={shards_per_pass!r} asks for vectorized passes, which the model's "
                f"{self.unvectorizable} does not support (see keras_msam.vectorization); "
                "use shards_per_pass=1 (plain passes, one shard at a time) or 'auto'."
            )
        self.inner = model
        patterns = _compile_patterns(exclude)
        self.exclude = tuple(p.pattern for p in patterns)
        self._perturbed = [not any(p.search(v.path) for p in patterns) for v in model.trainable_variables]
        self.bn_in_ascent = bn_in_ascent
        self.shards_per_pass = shards_per_pass
        self.rho_schedule = rho if callable(rho) else None
        self._rho = keras.Variable(0.0 if callable(rho) else rho, trainable=False, dtype="float64", name="sam_rho")
        self._sam_enabled = bool(sam_enabled)
        self._sam_trackers = [keras.metrics.Mean(name=n) for n in SAM_LOGS]
        self._jit_updates = {}  # sam_enabled -> XLA-compiled update (several replicas, jit_compile)
        self.first_batch = None  # per-replica size of the first training batch (m must not exceed it)
        self.shard_layouts = {}  # per-replica batch size -> the Layout `fit` measured fastest
        self.layout_reports = {}  # per-replica batch size -> what the tuning measured
        self.built = True

    # ----------------------------------------------------------------- runtime switches
    @property
    def normalize(self):
        return self.ascent.normalize

    @property
    def rho(self):
        """The current radius (a float); assigning a float changes it without recompiling."""
        if self.rho_schedule is not None:
            return float(self.rho_schedule(self.optimizer.iterations))
        return float(self._rho.numpy())

    @rho.setter
    def rho(self, value):
        if self.rho_schedule is not None:
            raise ValueError("This SAMModel follows a rho schedule; set rho_schedule=None before assigning rho.")
        if callable(value):
            raise ValueError("Assign a float to rho; pass a schedule to the constructor instead.")
        self._rho.assign(_check_rho(value))

    @property
    def sam_enabled(self):
        """SAM steps (True) or plain one-pass ERM steps (False); can be switched between any two steps.

        A Python switch, not a `tf.cond` (XLA on CPU runs convolutions inside a conditional tens of
        times slower): each setting has its own compiled step, traced once."""
        return self._sam_enabled

    @sam_enabled.setter
    def sam_enabled(self, value):
        self._sam_enabled = bool(value)

    def current_rho(self):
        """rho for this step as a float64 tensor (cast to each gradient's dtype where used; the schedule
        evaluated on optimizer.iterations)."""
        if self.rho_schedule is None:
            return tf.cast(self._rho, tf.float64)
        return tf.cast(self.rho_schedule(self.optimizer.iterations), tf.float64)

    # ----------------------------------------------------------------- shards
    def shard_size(self, batch):
        """Examples per shard for a per-replica batch of `batch` (m, or the batch for m=None or a short batch)."""
        return batch if self.m is None else min(self.m, batch)

    def num_shards(self, batch):
        """Full shards of a per-replica batch (a smaller last shard is not counted)."""
        return batch // self.shard_size(batch) if batch else 0

    def bytes_per_shard(self):
        """Memory of one vectorized shard: weights + eps, g and G, ~4 copies of the weights."""
        return 4 * sum(math.prod(v.shape) * tf.as_dtype(v.dtype).size for v in self.inner.trainable_variables)

    def layout_for(self, batch):
        """The layout of the full shards of a batch: measured by `fit` (shards_per_pass="auto"), else
        the static guess, or the one `shards_per_pass` sets."""
        num_shards = self.num_shards(batch)
        if self.shards_per_pass != "auto":
            return layouts.user_layout(self.shards_per_pass, num_shards)
        if batch in self.shard_layouts:
            return self.shard_layouts[batch]
        return layouts.static_layout(num_shards, self.bytes_per_shard(), bool(self.jit_compile), self.vectorizable)

    @property
    def vectorizable(self):
        """Whether the shards may run in vectorized passes (`keras_msam.vectorization`)."""
        return self.unvectorizable is None

    def check_batch(self, batch):
        """Before a training step on a per-replica batch of `batch`: m must not exceed the first batch."""
        if self.first_batch is None:
            self.first_batch = batch
        if self._sam_enabled and self.m is not None and batch is not None and batch >= self.first_batch and self.m > batch:
            raise ValueError(
                f"m={self.m} is larger than the per-replica batch size {batch}; use m <= {batch} "
                "(or m=None for one shard per batch), or a larger batch_size (m is per replica)."
            )

    def _shard_plan(self, batch, layout):
        """(m, layout) for a step on a per-replica batch; warns once per traced batch size when m does not
        fit it. A batch size known only at run time: m as set (or the batch), see `shards.run_shards`."""
        if not isinstance(batch, int):
            return self.m or batch, None
        m = self.shard_size(batch)
        if self.m is not None and self.m > batch:
            warnings.warn(f"SAMModel: a batch of {batch} examples per replica is smaller than m={self.m}: it runs "
                          f"as one shard of {batch} (e.g. the short last batch of an epoch).", stacklevel=3)
        elif batch % m:
            warnings.warn(f"SAMModel: m={m} does not divide the per-replica batch of {batch}: the last shard has "
                          f"{batch % m} examples (weighted by its size).", stacklevel=3)
        return m, layout or (self.layout_for(batch) if m < batch else None)

    # ----------------------------------------------------------------- Keras plumbing
    def call(self, inputs, training=False):
        return self.inner(inputs, training=training)

    def build(self, input_shape=None):
        if not self.inner.built:
            self.inner.build(input_shape)
        self.built = True

    @property
    def metrics(self):
        return super().metrics + self._sam_trackers

    def get_config(self):
        rho = keras.saving.serialize_keras_object(self.rho_schedule) if self.rho_schedule else float(self._rho.numpy())
        return {
            "model": keras.saving.serialize_keras_object(self.inner),
            "rho": rho,
            "m": self.m,
            "normalize": self.ascent.normalize,
            "ascent_steps": self.ascent.steps,
            "step_mult": self.ascent.step_mult,
            "adaptive": self.ascent.adaptive,
            "adaptive_eta": self.ascent.eta,
            "project": self.ascent.project,
            "exclude": list(self.exclude),
            "bn_in_ascent": self.bn_in_ascent,
            "shards_per_pass": self.shards_per_pass,
            "sam_enabled": self.sam_enabled,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"], custom_objects=custom_objects)
        if isinstance(config["rho"], dict):
            config["rho"] = keras.saving.deserialize_keras_object(config["rho"], custom_objects=custom_objects)
        return cls(**config)

    def _seed_states(self):
        return [v for v in self.inner.non_trainable_variables if v.path.endswith("seed_generator_state")]

    def save_own_variables(self, store):
        """Keras' variables plus the wrapped model's RNG seed states (e.g. Dropout's), which Keras does
        not save: a run resumed by `BackupAndRestore` then draws the same dropout masks."""
        super().save_own_variables(store)
        for i, variable in enumerate(self._seed_states()):
            store[f"{_SEED_KEY}{i}"] = variable

    def load_own_variables(self, store):
        seeds = {k: store[k] for k in store.keys() if k.startswith(_SEED_KEY)}
        super().load_own_variables({k: store[k] for k in store.keys() if not k.startswith(_SEED_KEY)})
        for i, variable in enumerate(self._seed_states()):
            if f"{_SEED_KEY}{i}" in seeds:
                variable.assign(seeds[f"{_SEED_KEY}{i}"])

    def make_train_function(self, force=False):
        if self.train_function is None or force:
            self.train_function = train_function.TrainFunction(self)
        return self.train_function

    def make_test_function(self, force=False):
        if self.test_function is None or force:
            self.test_function = train_function.StepFunction(
                self, lambda data, options: self.test_step(data), lambda data: None
            )
        return self.test_function

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' symbolic build of the compiled loss, metrics and optimizer before the first step (so the
        step is traced once, not twice for creating variables), from the first replica's part of a batch
        (Keras averages the replicas' batches, which fails under MultiWorkerMirroredStrategy)."""
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(lambda v: train_function._local_values(v)[0], next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    # ----------------------------------------------------------------- the step
    def train_step(self, data):
        """One step (Keras' API): SAM or ERM as `sam_enabled` says, shards in `layout_for(batch)`."""
        return self._train_step(data, train_function.StepOptions(self._sam_enabled, None))

    def _train_step(self, data, options):
        """Three phases: the update (SAM over shards, or ERM), applied to the weights, then the logs."""
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        batch = (x, y, sample_weight)
        if not self.inner.trainable_variables:
            return self._step_without_weights(batch)
        rho, examples = self.current_rho(), shards.leading_dim(x)
        update = self._update_function(options, empty=isinstance(examples, int) and examples == 0)
        grads, y_pred, state, logs = update(*self._state(), batch, rho, options.layout)
        self.optimizer.apply_gradients(zip(grads, self.inner.trainable_variables))
        for variable, value in zip(self.inner.non_trainable_variables, self._replicas_state(state, examples)):
            variable.assign(value)
        self._loss_tracker.update_state(logs.pop("loss"), sample_weight=examples)
        logs["rho"] = rho
        for tracker in self._sam_trackers:
            tracker.update_state(logs[tracker.name])
        self._track_output_losses(y, y_pred, sample_weight)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _update_function(self, options, empty=False):
        """`_sam_update` or `_erm_update` (`_empty_update` for a replica without examples); XLA-compiled
        on its own when `options.jit_update` (several replicas: XLA cannot compile a step that reaches
        the variables of several devices, so the gradients are compiled per replica and applied outside
        XLA)."""
        if empty:
            return self._empty_update
        update = self._sam_update if options.sam_enabled else self._erm_update
        if not options.jit_update:
            return update
        if options.sam_enabled not in self._jit_updates:
            self._jit_updates[options.sam_enabled] = tf.function(update, jit_compile=True, autograph=False)
        return self._jit_updates[options.sam_enabled]

    def test_step(self, data):
        """The wrapped model's evaluation; the SAM diagnostics are training-only."""
        return {k: v for k, v in super().test_step(data).items() if k not in SAM_LOGS}

    def _state(self):
        return [v.value for v in self.inner.trainable_variables], [v.value for v in self.inner.non_trainable_variables]

    def _erm_update(self, weights, state, batch, rho=None, layout=None):
        """The plain Keras step (whole batch, one pass), in the shape of `_sam_update`'s result."""
        grads, loss, y_pred, new_state = self._gradient(weights, state, batch, training=True)
        loss, grad_norm = self._unscaled(loss), ascent.global_norm(self._unscaled(self._dense(grads)))
        zero, one = tf.zeros((), tf.float32), tf.ones((), tf.float32)
        logs = {"loss": loss, "sam_loss": loss, "sharpness": zero, "grad_norm": grad_norm, "eps_norm": zero,
                "grad_cosine": one, "m": tf.cast(self.first_batch or shards.leading_dim(batch), tf.float32)}
        return grads, y_pred, new_state, logs

    def _sam_update(self, weights, state, batch, rho, layout):
        """Sum over shards of |S_j|/b * (G_j, losses, norms); predictions and state from the passes at w."""
        m, layout = self._shard_plan(shards.leading_dim(batch), layout)
        connected = []

        def shard_fn(shard, shard_state):
            return self._shard_update(weights, shard_state, shard, rho, connected)

        summed, y_pred, state = shards.run_shards(shard_fn, batch, state, self._state_kinds(), m, layout)
        grads, erm_grads = summed.pop("grads"), summed.pop("erm_grads")
        logs = {**summed, "sharpness": summed["sam_loss"] - summed["loss"], "grad_cosine": _cosine(erm_grads, grads),
                "m": tf.cast(self.m or self.first_batch or m, tf.float32)}  # the full batches' m, every step
        grads = [g if c else None for g, c in zip(grads, connected)]  # None: Keras skips it and warns
        return grads, y_pred, state, logs

    def _empty_update(self, weights, state, batch, rho=None, layout=None):
        """A replica without examples (a last batch smaller than the number of replicas): no gradient, no
        change of state, zero logs (a plain Keras model's BatchNorm turns such a step into NaN weights).
        The model never sees the empty batch (TensorFlow's oneDNN Conv2D returns an empty input
        unchanged, shape and all): the predictions are those of one zero example, cut to none."""
        one_example = tree.map_structure(lambda t: None if t is None else tf.zeros([1, *t.shape[1:]], t.dtype), batch)
        _, y_pred, _ = self._forward(weights, state, one_example, training=False)
        y_pred = tree.map_structure(lambda t: t[:0], y_pred)
        zero = tf.zeros((), tf.float32)
        logs = dict.fromkeys(("loss", "sam_loss", "sharpness", "grad_norm", "eps_norm", "grad_cosine"), zero)
        return [tf.zeros_like(w) for w in weights], y_pred, state, {**logs, "m": tf.cast(self.m or self.first_batch or 0, tf.float32)}

    def _shard_update(self, weights, state, shard, rho, connected):
        """One shard: ascent from w to w + eps, gradient there (the caller weights by |S_j| / b)."""
        frozen = self.bn_in_ascent == "frozen"
        g, loss, y_pred, new_state = self._gradient(weights, state, shard, training=not frozen)
        connected[:] = [t is not None for t in g]
        if frozen:  # BN statistics and logged predictions come from a training-mode pass at w
            loss, y_pred, new_state = self._forward(weights, state, shard, training=True)
        erm_grads = self._unscaled(self._dense(g))
        masked = self._mask(erm_grads)
        grad_norm = ascent.global_norm(masked)
        delta = self._perturbation(weights, state, shard, rho, masked, grad_norm)
        sam_grads, sam_loss, _, _ = self._gradient(_add(weights, delta), state, shard, training=True)
        summed = {
            "grads": self._dense(sam_grads),
            "erm_grads": erm_grads,
            "loss": self._unscaled(loss),
            "sam_loss": self._unscaled(sam_loss),
            "grad_norm": grad_norm,
            "eps_norm": ascent.global_norm(delta),
        }
        return summed, y_pred, new_state

    def _perturbation(self, weights, state, shard, rho, grad, grad_norm=None):
        """eps of one shard from its (unscaled, masked) gradient at w (`self.ascent`'s steps)."""
        training = self.bn_in_ascent != "frozen"

        def grad_at(delta):
            g, *_ = self._gradient(_add(weights, delta), state, shard, training=training)
            return self._mask(self._unscaled(self._dense(g)))

        return ascent.perturbation(self.ascent, grad, grad_at, weights, rho, grad_norm=grad_norm)

    def shard_perturbations(self, x, y=None, sample_weight=None, max_shards=None):
        """eps_j of the first `max_shards` shards of the batch (x, y) at the current weights and rho,
        as the train step computes them (a list over shards of lists over `inner.trainable_variables`).
        For inspection (e.g. `keras_msam.tensorboard.EpsHistograms`), run eagerly."""
        batch = int(shards.leading_dim(x))
        m = self.shard_size(batch)
        weights, state = self._state()
        training = self.bn_in_ascent != "frozen"
        result = []
        for start in list(range(0, batch, m))[:max_shards]:
            shard = shards.slice_batch((x, y, sample_weight), start, start + m)
            g, *_ = self._gradient(weights, state, shard, training=training)
            result.append(self._perturbation(weights, state, shard, self.current_rho(), self._mask(self._unscaled(self._dense(g)))))
        return result

    def _step_without_weights(self, batch):
        """A model without trainable weights: Keras' behaviour (a warning, metrics, no update)."""
        warnings.warn("The model does not have any trainable weights.", stacklevel=2)
        x, y, sample_weight = batch
        loss, y_pred, state = self._forward([], self._state()[1], batch, training=True)
        for variable, value in zip(self.inner.non_trainable_variables, state):
            variable.assign(value)
        self._loss_tracker.update_state(self._unscaled(loss), sample_weight=shards.leading_dim(x))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # ----------------------------------------------------------------- helpers
    def _forward(self, weights, state, batch, training):
        """Loss (scaled for distribution and loss scaling), predictions and new state at `weights`.
        Keras' per-output loss trackers are left alone (see `_track_output_losses`)."""
        x, y, sample_weight = batch
        kwargs = {"training": training} if self.inner._call_has_training_arg else {}
        y_pred, new_state, losses = self.inner.stateless_call(weights, state, x, return_losses=True, **kwargs)
        self._losses_override = list(losses)
        try:
            with self._output_loss_trackers_paused():
                loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        finally:
            self._losses_override = []
        return self.optimizer.scale_loss(loss), y_pred, new_state

    def _output_loss_trackers(self):
        """Keras' per-output loss metrics of a model with several outputs (`cls_loss`, ...), or []."""
        return list(getattr(getattr(self, "_compile_loss", None), "metrics", None) or ())

    @contextlib.contextmanager
    def _output_loss_trackers_paused(self):
        """The compiled loss updates its per-output trackers whenever it is called; a step calls it for
        every shard at w and at w + eps, so those calls must not count."""
        trackers = self._output_loss_trackers()
        for tracker in trackers:
            tracker.update_state = lambda *args, **kwargs: None
        try:
            yield
        finally:
            for tracker in trackers:
                del tracker.update_state  # the class's method again

    def _track_output_losses(self, y, y_pred, sample_weight):
        """The per-output losses of the step, as Keras logs them: from the predictions at w (training
        mode) of the whole batch."""
        if self._output_loss_trackers():
            self._compile_loss(y, y_pred, sample_weight)

    def _replicas_state(self, state, examples):
        """Under several replicas, BatchNorm moving statistics averaged over the replicas, weighted by
        their examples, so that every replica and worker holds the same (the other state is the
        replica's own)."""
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return state
        ema = [i for i, (kind, _) in enumerate(self._state_kinds()) if kind == shards.EMA]
        if not ema:
            return state
        weighted = [state[i] * tf.cast(examples, state[i].dtype) for i in ema]
        count, *sums = train_function.all_reduce([tf.cast(examples, tf.float32), *weighted], self.distribute_strategy, "SUM")
        state = list(state)
        for i, total in zip(ema, sums):
            state[i] = total / tf.cast(count, total.dtype)
        return state

    def _gradient(self, weights, state, batch, training):
        """(gradients, None where the loss does not depend on a weight; loss; predictions; new state)."""
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss, y_pred, new_state = self._forward(weights, state, batch, training)
        return tape.gradient(loss, weights), loss, y_pred, new_state

    def _dense(self, grads):
        """Gradients with zeros for the weights the loss does not depend on."""
        return [tf.zeros_like(v.value) if g is None else tf.convert_to_tensor(g)
                for g, v in zip(grads, self.inner.trainable_variables)]

    def _unscaled(self, value):
        """Undoes the mixed-precision loss scale and the 1/replicas scaling of Keras losses
        (float16 values come back in float32; float32 and float64 keep their dtype)."""
        if isinstance(value, (list, tuple)):
            return [self._unscaled(v) for v in value]
        value = tf.convert_to_tensor(value)
        if value.dtype in (tf.float16, tf.bfloat16):
            value = tf.cast(value, tf.float32)
        scale = getattr(self.optimizer, "dynamic_scale", None)
        if scale is not None:
            value = value / tf.cast(scale, value.dtype)
        return loss_module.unscale_loss_for_distribution(value)

    def _mask(self, grads):
        """Zeros for the gradients of excluded variables (`exclude`): they are not perturbed."""
        if all(self._perturbed):
            return grads
        return [g if keep else tf.zeros_like(g) for g, keep in zip(grads, self._perturbed)]

    def _state_kinds(self):
        """How each non-trainable variable merges across shards (see `shards.merge_state`)."""
        momentum = {}
        for layer in self.inner._flatten_layers(include_self=True):
            if isinstance(layer, keras.layers.BatchNormalization):
                for v in (layer.moving_mean, layer.moving_variance):
                    momentum[id(v)] = layer.momentum
        kinds = []
        for v in self.inner.non_trainable_variables:
            if id(v) in momentum:
                kinds.append((shards.EMA, momentum[id(v)]))
            elif v.path.endswith("seed_generator_state"):
                kinds.append((shards.SEED, None))
            else:
                kinds.append((shards.LAST, None))
        return kinds
