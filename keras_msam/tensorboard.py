"""TensorBoard views of SAM training: step scalars, eps histograms, and tuner trials as HParams sessions.

- `SAMScalars(log_dir, every_n_steps)`: the diagnostics `SAMModel.train_step` logs (loss at w and at
  w + eps, sharpness, ||g||, ||eps||, rho; `grad_cosine` and `m` when the model logs them), plus the
  model's m and whether SAM is on, as scalars under "sam/" every N steps. It only reads the logs that
  `fit` already has, and is dispatched asynchronously, so it does not stall the training loop.
- `EpsHistograms(log_dir, data_batch, every_n_epochs)`: for a fixed batch, eps_j for each shard j of m
  examples (as `SAMModel` computes it) and a histogram, per layer, of ||eps_j|| over the shards.
- `with_hparams(TunerClass)`: a tuner that gives these callbacks (and Keras' `TensorBoard`) one log
  directory per trial and writes the trial's hyperparameters for TensorBoard's HParams dashboard.

Open with `tensorboard --logdir LOG_DIR`; docs/tools.md ("TensorBoard") says what each scalar means.
"""

import copy
import os
import threading

import keras
import numpy as np
import tensorflow as tf
from keras.src.trainers.data_adapters import data_adapter_utils
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import summary as hparams_summary
from tensorboard.plugins.hparams import summary_v2 as hparams_summary_v2

from keras_msam import ascent
from keras_msam.sam_model import check_sam_model

# Keys of the fit logs written by SAMScalars (when present), with their tags.
SCALAR_LOGS = {
    "loss": "sam/loss_at_w",
    "sam_loss": "sam/loss_at_w_plus_eps",
    "sharpness": "sam/sharpness",
    "grad_norm": "sam/grad_norm",
    "eps_norm": "sam/eps_norm",
    "rho": "sam/rho",
    "grad_cosine": "sam/grad_cosine",
    "m": "sam/m",
}


def _check_positive_int(value, name):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {name}={value!r}.")


_WRITERS = {}


def shared_writer(log_dir):
    """One summary writer per directory, shared by this module's callbacks: one event file per run, which
    TensorBoard follows live (several files written at once in one directory are only read in full later)."""
    key = os.path.abspath(log_dir)
    if key not in _WRITERS:
        _WRITERS[key] = tf.summary.create_file_writer(key)
    return _WRITERS[key]


class _TrialLogDir(keras.callbacks.Callback):
    """A callback writing to `self.log_dir` that `with_hparams` tuners move to a per-trial directory."""

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            self._writer = shared_writer(self.log_dir)
        return self._writer

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def __deepcopy__(self, memo):
        """Tuners deep-copy callbacks for each trial: copy the settings, not the writer, lock or model."""
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        skip = {"_writer": None, "_lock": None, "_model": None, "_write_fns": {}}
        clone.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k not in skip})
        clone.__dict__.update(copy.deepcopy(skip))
        if "_lock" in self.__dict__:
            clone._lock = threading.Lock()
        return clone


# ----------------------------------------------------------------------------------- (a) scalars
class SAMScalars(_TrialLogDir):
    """Writes SAM's step diagnostics as TensorBoard scalars every `every_n_steps` training steps.

    Each value is the mean over the steps since the previous write (Keras logs hold running means over
    the epoch; this callback takes their difference), so the curve is not smoothed over a whole epoch.
    The first write of an epoch covers the steps since the start of that epoch.

    Scalars (tags): sam/loss_at_w, sam/loss_at_w_plus_eps, sam/sharpness (their difference),
    sam/grad_norm (||g|| at w), sam/eps_norm (||eps||), sam/rho, sam/m (examples per shard; the
    per-replica batch for m=None when `batch_size` is given), sam/sam_enabled (1 SAM, 0 ERM), and
    sam/grad_cosine when the model logs `grad_cosine`. Step = training steps done in this `fit`
    (plus those of earlier fits of the same callback). With `steps_per_execution` > 1, Keras reports every
    k steps and the write happens at the first report at or past each multiple of N.

    Args:
        log_dir: directory of the event files.
        every_n_steps: write period in training steps.
        batch_size: per-replica batch size, used to write m for n-SAM (m=None); optional.
    """

    async_safe = True  # reads only its arguments; Keras may call it from a worker thread

    def __init__(self, log_dir, every_n_steps=100, batch_size=None):
        super().__init__(log_dir)
        _check_positive_int(every_n_steps, "every_n_steps")
        if batch_size is not None:
            _check_positive_int(batch_size, "batch_size")
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._steps_before_epoch = 0  # global step at the start of the current epoch
        self._steps_in_epoch = 0
        self._last = (0, {})  # (steps into the epoch, running means) at the previous write
        self._last_step = 0  # global step of the previous write
        self._write_fns = {}  # tuple of tags -> compiled writer

    def set_model(self, model):
        check_sam_model(model, "SAMScalars")
        super().set_model(model)

    def on_epoch_begin(self, epoch, logs=None):
        with self._lock:
            self._steps_before_epoch += self._steps_in_epoch
            self._steps_in_epoch = 0
            self._last = (0, {})

    def on_train_batch_end(self, batch, logs=None):
        done = batch + 1  # steps done in this epoch (Keras passes the last step of an execution, and
        steps = (self.params or {}).get("steps")  # may overshoot the epoch's end with steps_per_execution)
        done = min(done, steps) if steps else done
        step = self._steps_before_epoch + done
        with self._lock:
            self._steps_in_epoch = max(self._steps_in_epoch, done)
            # A write once a multiple of N is reached (or passed, with steps_per_execution > 1).
            if step // self.every_n_steps == self._last_step // self.every_n_steps or not logs:
                return
            self._last_step = step
            values = self._interval_means(done, logs)
            values["sam/sam_enabled"] = float(self.model.sam_enabled)
            m = self.model.m if self.model.m is not None else self.batch_size
            if "m" not in logs and m is not None:
                values["sam/m"] = float(m)
            self._write(values, step)

    def _write(self, values, step):
        """All scalars of one step in one compiled call (a quarter of the cost of eager summary ops)."""
        tags = tuple(values)
        if tags not in self._write_fns:
            writer = self.writer

            @tf.function
            def write(vals, step):
                with writer.as_default(step=step):
                    for i, tag in enumerate(tags):
                        tf.summary.scalar(tag, vals[i])

            self._write_fns[tags] = write
        self._write_fns[tags](tf.constant([values[t] for t in tags], tf.float32), tf.constant(step, tf.int64))

    def _interval_means(self, done, logs):
        last_done, last_means = self._last
        means = {key: float(logs[key]) for key in SCALAR_LOGS if key in logs}
        self._last = (done, means)
        span = done - last_done
        return {
            SCALAR_LOGS[key]: (done * mean - last_done * last_means.get(key, 0.0)) / span
            for key, mean in means.items()
        }


# ----------------------------------------------------------------------------------- (b) histograms
def layer_of(variable):
    """The layer part of a variable's path ("dense_1/kernel" -> "dense_1")."""
    return variable.path.rsplit("/", 1)[0] if "/" in variable.path else variable.path


def shard_eps(model, x, y=None, sample_weight=None, max_shards=None):
    """eps_j of each shard j of m examples of the batch (x, y), as SAMModel's ascent computes it.

    Uses the model's own loss, gradient masking (`exclude`), ascent variant (normalize, adaptive,
    ascent_steps) and BatchNorm mode at the current weights; rho is the current rho.
    Returns a list (shards) of lists (trainable variables of `model.inner`) of float32 tensors.
    """
    check_sam_model(model, "shard_eps")
    return model.shard_perturbations(x, y, sample_weight, max_shards=max_shards)


def layer_eps_norms(model, eps_per_shard, group="layer"):
    """{layer (or variable) path: array of ||eps_j restricted to it|| over shards j}, and "all": ||eps_j||."""
    if group not in ("layer", "variable"):
        raise ValueError(f'group must be "layer" or "variable"; got group={group!r}.')
    layers = [layer_of(v) if group == "layer" else v.path for v in model.inner.trainable_variables]
    norms = {}
    for name in dict.fromkeys(layers):
        norms[name] = np.array(
            [ascent.global_norm([e for e, lay in zip(eps, layers) if lay == name]).numpy() for eps in eps_per_shard]
        )
    norms["all"] = np.array([ascent.global_norm(eps).numpy() for eps in eps_per_shard])
    return norms


class EpsHistograms(_TrialLogDir):
    """Every `every_n_epochs` epochs, a histogram per layer of ||eps_j|| over the shards j of `data_batch`.

    Tags: eps_norm/<layer path> (one value per shard: how far SAM pushes that layer) and eps_norm/all
    (the whole perturbation; rho for every shard when normalized). Step = epoch number (1-based).
    The eps is SAMModel's at the end of the epoch's weights, with the model's m, rho and ascent variant
    (ERM, rho = 0: all zeros).

    Args:
        log_dir: directory of the event files.
        data_batch: (x, y) or (x, y, sample_weight) arrays of one batch, split into shards of the model's m.
        every_n_epochs: write period in epochs.
        max_shards: at most this many shards are used (each is one or more gradient evaluations).
        group: "layer" (variables grouped by layer) or "variable" (one histogram per variable).
    """

    def __init__(self, log_dir, data_batch, every_n_epochs=1, max_shards=64, group="layer"):
        super().__init__(log_dir)
        _check_positive_int(every_n_epochs, "every_n_epochs")
        _check_positive_int(max_shards, "max_shards")
        if not isinstance(data_batch, (tuple, list)) or len(data_batch) not in (2, 3):
            raise ValueError("data_batch must be (x, y) or (x, y, sample_weight) for one batch of examples.")
        self.data_batch = tuple(data_batch)
        self.every_n_epochs = every_n_epochs
        self.max_shards = max_shards
        if group not in ("layer", "variable"):
            raise ValueError(f'group must be "layer" or "variable"; got group={group!r}.')
        self.group = group

    def set_model(self, model):
        check_sam_model(model, "EpsHistograms")
        super().set_model(model)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(self.data_batch)
        eps = shard_eps(self.model, x, y, sample_weight, self.max_shards)
        with self.writer.as_default(step=epoch + 1):
            for layer, norms in layer_eps_norms(self.model, eps, self.group).items():
                tf.summary.histogram(f"eps_norm/{layer}", norms)


# ----------------------------------------------------------------------------------- (c) hparams
class _HParamsSession(keras.callbacks.Callback):
    """Writes one HParams session (start: the trial's hyperparameters; end: its status) in `log_dir`."""

    def __init__(self, log_dir, hparams, trial_id):
        super().__init__()
        hparams_summary_v2.hparams_pb(hparams, trial_id=trial_id)  # fail now on invalid values
        self.log_dir, self.hparams, self.trial_id = log_dir, hparams, trial_id

    def on_train_begin(self, logs=None):
        self._writer = shared_writer(self.log_dir)
        with self._writer.as_default():
            hparams_summary_v2.hparams(self.hparams, trial_id=self.trial_id)

    def on_train_end(self, logs=None):
        with self._writer.as_default():
            end = hparams_summary.session_end_pb(api_pb2.STATUS_SUCCESS).SerializeToString()
            tf.summary.experimental.write_raw_pb(end, step=0)
        self._writer.flush()


def trial_hparams(hyperparameters):
    """{name: value} of the active hyperparameters of a trial (KerasTuner's own "tuner/..." ones left out)."""
    return {hp.name: hyperparameters.values[hp.name] for hp in hyperparameters.space if hyperparameters.is_active(hp)}


def with_hparams(tuner_class):
    """A subclass of a KerasTuner tuner class whose trials are HParams sessions in TensorBoard.

    For each trial (and execution) the `SAMScalars` / `EpsHistograms` callbacks passed to `search` write
    to LOG_DIR/<trial_id>/execution<k>, next to that trial's hyperparameters, so the HParams dashboard
    lists one session per trial with its rho, m, lr and metrics. Keras' `TensorBoard` callback gets the
    same treatment from KerasTuner itself.
    """

    class HParamsTuner(tuner_class):
        # KerasTuner's own hook for per-trial TensorBoard directories (Tuner.run_trial calls it for every
        # execution, after deep-copying the callbacks), extended to this module's callbacks.
        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            super()._configure_tensorboard_dir(callbacks, trial, execution)  # Keras TensorBoard + its hparams
            covered = {os.path.abspath(c.log_dir) for c in callbacks if type(c).__name__ == "TensorBoard"}
            sessions = []
            for callback in callbacks:
                if isinstance(callback, _TrialLogDir):
                    callback.log_dir = self._get_tensorboard_dir(callback.log_dir, trial.trial_id, execution)
                    if os.path.abspath(callback.log_dir) not in covered:
                        covered.add(os.path.abspath(callback.log_dir))
                        hparams = trial_hparams(trial.hyperparameters)
                        sessions.append(_HParamsSession(callback.log_dir, hparams, trial.trial_id))
            callbacks.extend(sessions)

    HParamsTuner.__name__ = HParamsTuner.__qualname__ = f"HParams{tuner_class.__name__}"
    return HParamsTuner
