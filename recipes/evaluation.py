"""Evaluations during a `fit`, every K epochs, with a best-by-validation checkpoint that survives a kill.

`PeriodicEvaluation` evaluates the trained network (the papers evaluate every 5 epochs and early-stop
on the validation error); `SWAEvaluation` evaluates the papers' "SWA" model, an exponential moving
average of the weights (`keras_msam.swa.WeightEMA`) with its BatchNorm statistics recomputed. Both
write their numbers into the epoch's logs (so into history.csv and TensorBoard), keep the evaluation
with the strictly lowest `val_error` (the earliest on ties, as the papers) as OUT/<best file>, and save
their state through `committer`, a callback placed after `BackupAndRestore`, so that the saved state
never runs ahead of the backup a resumed run restarts from.
"""

import json
import math
import os
import time
import warnings

import keras

from keras_msam.swa import WeightEMA
from recipes import outputs


class PeriodicEvaluation(keras.callbacks.Callback):
    """`evaluate_fn(network)` (a dict with at least `keys`) every `every` epochs and after the last, and
    before training when `at_start`.

    - Logs: `prefix + key` for every key (NaN on the epochs without an evaluation, so that every
      history row has the same columns), and `epoch_seconds`, the training time of the epoch without
      the evaluations (when `time_epochs`).
    - `rows`: every evaluation, {"epoch": epochs done, key: value, ...}; epoch 0 is before training.
    - Best-by-validation: the row whose `val_error` is strictly lower than the best so far becomes the
      best; the network's weights go to OUT/`files[1]` (through a pending file until committed).
    - Resume: the rows and the best are kept in OUT/`files[0]`; a resumed run reads them back and, if
      the evaluation of its last backed-up epoch was lost, evaluates the restored weights at once.
    """

    FILES = ("evaluation.json", "best.weights.h5", "best_pending.weights.h5")

    def __init__(self, evaluate_fn, keys, every, epochs, out, network, *, prefix="", files=FILES, at_start=True,
                 time_epochs=True):
        super().__init__()
        self.evaluate_fn, self.keys, self.every, self.epochs = evaluate_fn, list(keys), int(every), int(epochs)
        self.out, self.network, self.prefix, self.at_start, self.time_epochs = out, network, prefix, at_start, time_epochs
        self.state_file, self.best_file, self.pending_file = (os.path.join(out, name) for name in files)
        self.rows, self.best, self._pending, self._started, self._epoch_start = [], None, None, None, None
        self.committer = _Commit(self)

    def due(self, epochs_done):
        """Whether the model after `epochs_done` epochs is evaluated."""
        if epochs_done == self.epochs:
            return True
        return self.every > 0 and epochs_done % self.every == 0

    def evaluated_network(self):
        """The network to evaluate now (a subclass may build it)."""
        return self.network

    def _evaluate(self, epochs_done):
        numbers = self.evaluate_fn(self.evaluated_network())
        row = {"epoch": epochs_done, **{k: numbers[k] for k in self.keys if numbers.get(k) is not None}}
        self.rows = [r for r in self.rows if r["epoch"] != epochs_done] + [row]
        value = row.get("val_error")
        if value is not None and math.isfinite(value) and (self.best is None or value < self.best["val_error"]):
            self.network.save_weights(self.pending_file)
            self._pending = row
        return row

    def commit(self, epochs_done):
        """Makes the pending best and the rows durable (after the epoch was backed up)."""
        if self._pending is not None:
            os.replace(self.pending_file, self.best_file)
            self.best, self._pending = self._pending, None
        outputs.write_json(self.state_file, {"epoch": epochs_done, "rows": self.rows, "best": self.best})

    def restore(self, epoch):
        """Reads the rows and the best of a run resumed at `epoch` (epochs done) back."""
        if not os.path.exists(self.state_file):
            return
        with open(self.state_file) as handle:
            saved = json.load(handle)
        self.rows = [r for r in saved["rows"] if r["epoch"] <= epoch]
        best = saved.get("best")
        self.best = best if best is not None and best["epoch"] <= epoch else None

    def on_epoch_begin(self, epoch, logs=None):
        if self._started is None:  # the first epoch of this process: a fresh run (0) or a resumed one
            self._started = epoch
            if os.path.exists(self.pending_file):
                os.remove(self.pending_file)
            if epoch > 0:
                self.restore(epoch)
            if (epoch == 0 and self.at_start) or (epoch > 0 and self.due(epoch)
                                                  and all(r["epoch"] != epoch for r in self.rows)):
                self._evaluate(epoch)
                self.commit(epoch)
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self.time_epochs:
            logs["epoch_seconds"] = time.perf_counter() - self._epoch_start
        row = self._evaluate(epoch + 1) if self.due(epoch + 1) else {}
        for key in self.keys:
            value = row.get(key)
            logs[self.prefix + key] = float("nan") if value is None else value

    def last(self):
        """The evaluation after the last epoch, or None."""
        return self.rows[-1] if self.rows and self.rows[-1]["epoch"] == self.epochs else None

    def selection(self):
        """{"val_selection": the best-by-validation evaluation, "test_selection": the lowest test error
        (the papers log both; only the first is a fair choice)}."""
        results = {}
        if self.best is not None:
            results["val_selection"] = dict(self.best)
        finite = [r for r in self.rows if r.get("test_error") is not None and math.isfinite(r["test_error"])]
        if finite:
            results["test_selection"] = dict(min(finite, key=lambda r: r["test_error"]))
        return results


class SWAEvaluation(PeriodicEvaluation):
    """The papers' SWA model during training (deep_nets/train.py:176, 373, 378, 410-422, 470-471).

    `ema` (a `WeightEMA`, among the fit callbacks) averages the weights after every step. At every
    evaluation the averaged weights go into `swa_net` (a clone of the network), its BatchNorm statistics
    are recomputed on one pass of `bn_batches` (the augmented training batches, as the papers'
    `bn_update(train_batches, model_swa)`), and `evaluate_fn(swa_net)` is logged as `swa_<key>`. The
    best goes to OUT/swa_best.weights.h5, the last to OUT/swa_last.weights.h5. The average itself is
    saved after every epoch, so that a resumed run continues it.
    """

    KEYS = ("test_error", "test_loss", "val_error", "val_loss", "train_error", "train_loss")
    FILES = ("swa.json", "swa_best.weights.h5", "swa_best_pending.weights.h5")
    EMA_FILE, LAST = "swa_ema.npz", "swa_last.weights.h5"

    def __init__(self, ema, swa_net, bn_batches, evaluate_fn, every, epochs, out):
        super().__init__(evaluate_fn, self.KEYS, every, epochs, out, swa_net, prefix="swa_", files=self.FILES,
                         at_start=False, time_epochs=False)
        self.ema, self.bn_batches = ema, bn_batches
        self.ema_file = os.path.join(out, self.EMA_FILE)

    def evaluated_network(self):
        self.ema.assign_to(self.network, bn_data=self.bn_batches)
        return self.network

    def commit(self, epochs_done):
        super().commit(epochs_done)
        self.ema.save(self.ema_file)

    def restore(self, epoch):
        saved_epoch = None
        if os.path.exists(self.state_file) and os.path.exists(self.ema_file):
            with open(self.state_file) as handle:
                saved_epoch = json.load(handle).get("epoch")
        if saved_epoch == epoch:
            self.ema.load(self.ema_file, self.model)
            super().restore(epoch)
        else:
            warnings.warn(f"SWAEvaluation: no SWA state of epoch {epoch} in {self.out}: the average restarts at the "
                          "restored weights.", stacklevel=2)

    def on_train_end(self, logs=None):
        if self.last() is not None:
            self.network.save_weights(os.path.join(self.out, self.LAST))
        if os.path.exists(self.ema_file):  # the run is complete: nothing to resume
            os.remove(self.ema_file)

    def results(self):
        """{"swa_last": the evaluation after the last epoch, "swa_best": the best by validation}."""
        return {"swa_last": self.last(), "swa_best": self.best}


def swa_callbacks(net, bn_batches, evaluate_fn, tau, every, epochs, out):
    """(SWAEvaluation, callbacks before the CSV logger, callbacks after the backup) for `fit`."""
    ema = WeightEMA(tau)
    swa_net = keras.models.clone_model(net)
    evaluation = SWAEvaluation(ema, swa_net, bn_batches, evaluate_fn, every, epochs, out)
    return evaluation, [ema, evaluation], [evaluation.committer]


class _Commit(keras.callbacks.Callback):
    def __init__(self, evaluation):
        super().__init__()
        self.evaluation = evaluation

    def on_epoch_end(self, epoch, logs=None):
        self.evaluation.commit(epoch + 1)
