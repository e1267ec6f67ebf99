"""Keras callbacks that switch `SAMModel`'s run-time settings between epochs (no recompilation).

- `SAMWindow(start, end, epochs)`: SAM on for the epochs in the window [start, end) given as fractions
  of `epochs` (0.9, 1.0: ERM then SAM for the last 10 %; 0.0, 0.5: SAM then ERM), ERM outside it.
- `RhoSchedule(fn)`: sets `model.rho = fn(epoch)` at the start of every epoch (e.g. rho proportional to
  the learning rate).
- `LearningRateLogger()`: logs the learning rate of the epoch's last step as `lr`.

Both act in `on_epoch_begin`, so they also hold after `BackupAndRestore` resumes at a later epoch.
"""

import math

import keras

from keras_msam.sam_model import check_sam_model


class SAMWindow(keras.callbacks.Callback):
    """SAM during epochs [round(start * epochs), round(end * epochs)), plain ERM steps otherwise.

    Args:
        start, end: fractions of training, 0 <= start <= end <= 1.
        epochs: total epochs of the run (the number the fractions refer to).
        verbose: print a line whenever the mode changes.
    """

    def __init__(self, start, end, epochs, verbose=1):
        super().__init__()
        if not (0.0 <= start <= end <= 1.0):
            raise ValueError(
                f"SAM window must satisfy 0 <= start <= end <= 1 (fractions of the epochs); got start={start}, end={end}."
            )
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int; got epochs={epochs!r}.")
        self.start, self.end, self.epochs = float(start), float(end), epochs
        self.first_epoch = int(math.floor(start * epochs + 0.5))
        self.stop_epoch = int(math.floor(end * epochs + 0.5))
        self.verbose = verbose
        self._last = None

    def active(self, epoch):
        """Whether SAM is on in (0-based) epoch `epoch`."""
        return self.first_epoch <= epoch < self.stop_epoch

    def on_train_begin(self, logs=None):
        check_sam_model(self.model, "SAMWindow")
        self._last = None

    def on_epoch_begin(self, epoch, logs=None):
        enabled = self.active(epoch)
        self.model.sam_enabled = enabled
        if self.verbose and enabled != self._last:
            print(f"SAMWindow: epoch {epoch + 1}: {'SAM' if enabled else 'ERM'} steps")
        self._last = enabled

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["sam_enabled"] = float(self.active(epoch))


class RhoSchedule(keras.callbacks.Callback):
    """Sets `model.rho = fn(epoch)` (0-based epoch) at the start of every epoch (SAMModel logs `rho`)."""

    def __init__(self, fn, verbose=0):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"RhoSchedule needs a callable epoch -> rho; got {fn!r}.")
        self.fn = fn
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        check_sam_model(self.model, "RhoSchedule")

    def on_epoch_begin(self, epoch, logs=None):
        rho = float(self.fn(epoch))
        if rho < 0:
            raise ValueError(f"RhoSchedule: fn({epoch}) = {rho} but rho must be >= 0.")
        self.model.rho = rho
        if self.verbose:
            print(f"RhoSchedule: epoch {epoch + 1}: rho = {rho:g}")


class LearningRateLogger(keras.callbacks.Callback):
    """Adds `lr` to the epoch logs: the learning rate of the epoch's last optimizer step."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        optimizer = self.model.optimizer
        schedule = getattr(optimizer, "_learning_rate", None)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            value = schedule(max(int(optimizer.iterations.numpy()) - 1, 0))
        else:
            value = optimizer.learning_rate
        logs["lr"] = float(keras.ops.convert_to_numpy(value))
