"""The one runner of the recipes: a compiled step loop for in-memory tasks, and `fit` for datasets.

`StepLoop(model, x, y)` trains a compiled Keras model (a `keras_msam.SAMModel` in every recipe; ERM and
SGD are a SAMModel with SAM off) on data held in memory. One `tf.function` (XLA by default) runs `chunk`
calls of `model.train_step` in a `tf.while_loop`, so Python is entered once per chunk, where
`measure(model)` records the curve, not once per step: for the recipes' small models this is much
faster than `fit` (measured in docs/performance.md, `benchmarks/step_loop.py`). Each step takes either the full batch or the rows of a
precomputed index array (`with_replacement`, `shuffled_epochs`). `model.sam_enabled` is a Python argument
of the compiled function: SAM on and off are one trace each, and switching between runs costs nothing.

`fit_dataset(...)` is `model.fit` on a `tf.data` pipeline with the recipes' standard callbacks (CSV
history, TensorBoard, resume after a kill, the learning rate in the logs) and the history read back.
"""

import csv
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_msam.callbacks import LearningRateLogger
from recipes import outputs


def chunk_for(steps, chunk=None):
    """Steps per compiled call: `chunk` if given, else the largest divisor of `steps` <= max(steps // 100, 1)."""
    if chunk is not None:
        return int(chunk)
    target = max(int(steps) // 100, 1)
    return next(k for k in range(target, 0, -1) if steps % k == 0)


def check_steps(steps, chunk=None):
    """The chunk (`chunk_for(steps, chunk)`) after checking that `steps` is a positive multiple of it."""
    if chunk is not None and (not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise ValueError(f"chunk must be a positive int (steps per compiled call); got chunk={chunk!r}.")
    if not isinstance(steps, (int, np.integer)) or steps < 1 or steps % chunk_for(steps, chunk):
        raise ValueError(f"steps must be a positive multiple of chunk={chunk_for(max(int(steps), 1), chunk)}; "
                         f"got steps={steps!r}.")
    return chunk_for(steps, chunk)


def with_replacement(n, steps, batch_size=1, seed=0):
    """[steps, batch_size] example indices drawn uniformly with replacement (`np.random.default_rng(seed)`)."""
    return np.random.default_rng(seed).integers(n, size=(steps, batch_size)).astype(np.int32)


def shuffled_epochs(n, steps, batch_size=1, seed=0):
    """[steps, batch_size] example indices in the order of `tf.data`'s
    `Dataset.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat().batch(batch_size)`: shuffled
    epochs back to back. Sets TensorFlow's global seed to `seed` (the shuffle depends on it)."""
    tf.random.set_seed(seed)
    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    return np.stack([b.numpy() for b in order.batch(batch_size).take(steps)]).astype(np.int32)


SAMPLINGS = {"with_replacement": with_replacement, "shuffled_epochs": shuffled_epochs}


class StepLoop:
    """Steps of a compiled model on in-memory data, `chunk` of them per compiled call.

    Args:
        model: a compiled Keras model (its optimizer and loss are what the steps use). It is built here
            (optimizer, compiled loss and metrics) without taking a step.
        x, y: all the training data (a batch is all of it, or rows chosen by `run(batches=...)`).
        jit_compile: compile the loop with XLA.
        dtype: dtype of x and y inside the loop.

    The compiled loop is traced once per setting of `model.sam_enabled` and reused by every `run`, so one
    StepLoop serves many runs (e.g. a grid over rho: rho is a variable of SAMModel).
    """

    def __init__(self, model, x, y, jit_compile=True, dtype="float32"):
        self.model, self.jit_compile = model, jit_compile
        self.x, self.y = tf.constant(x, dtype), tf.constant(y, dtype)
        model._symbolic_build(data_batch=(self.x, self.y))  # optimizer, compiled loss and metrics, as fit does
        self._loops = {}

    def _loop(self, sampled):
        """The compiled loop (full batch or sampled) for the current `model.sam_enabled`, traced once each."""
        key = (sampled, getattr(self.model, "sam_enabled", None))
        if key not in self._loops:
            # One step is its own tf.function, as in Keras' fit, and sampled batches have an unknown batch
            # size, as fit's do: a step here is the step fit takes on the same batch, to the last bit.
            step = tf.function(self.model.train_step, reduce_retracing=True, autograph=False)
            x, y = self.x, self.y

            def full_batch_steps(count):
                def body(i):
                    step((x, y))
                    return i + 1

                return tf.while_loop(lambda i: i < count, body, [tf.constant(0)])

            def sampled_steps(batches):
                def body(i):
                    step((tf.gather(x, batches[i]), tf.gather(y, batches[i])))
                    return i + 1

                return tf.while_loop(lambda i: i < tf.shape(batches)[0], body, [tf.constant(0)])

            loop, spec = (sampled_steps, [None, None]) if sampled else (full_batch_steps, [])
            self._loops[key] = tf.function(loop, input_signature=[tf.TensorSpec(spec, tf.int32)], autograph=False,
                                           jit_compile=self.jit_compile)
        return self._loops[key]

    def run(self, steps, chunk=None, batches=None, measure=None, stop=None, progress=False, desc="steps"):
        """Takes `steps` steps from the model's current weights; returns the curve.

        Args:
            steps: number of steps, a multiple of `chunk`.
            chunk: steps per compiled call (also the spacing of the curve); None: `chunk_for(steps)`.
            batches: None (every step on all of x, y) or a [steps, batch] int array: step i on rows batches[i].
            measure: `measure(model) -> dict` of numbers, called after every chunk.
            stop: `stop(record) -> bool` on measure's dict: True ends the run after that chunk.
                The run also ends when the record's "train_loss" is not finite.
            progress: show the progress over the chunks (`outputs.progress`), labelled `desc`.

        Returns:
            {"step": [steps taken after each chunk], key: [measure's value] for each key measure returns}.
        """
        chunk = check_steps(steps, chunk)
        if batches is not None and len(batches) != steps:
            raise ValueError(f"batches must hold one row of example indices per step ({steps}); got {len(batches)}.")
        curve = {"step": []}
        for start in outputs.progress(range(0, steps, chunk), desc, enabled=progress):
            if batches is None:
                self._loop(sampled=False)(tf.constant(chunk))
            else:
                self._loop(sampled=True)(tf.constant(batches[start : start + chunk]))
            record = measure(self.model) if measure is not None else {}
            curve["step"].append(start + chunk)
            for key, value in record.items():
                curve.setdefault(key, []).append(value)
            loss = record.get("train_loss")
            if (loss is not None and not math.isfinite(loss)) or (stop is not None and stop(record)):
                break
        return curve


# ------------------------------------------------------------------------------------------ datasets
def fit_dataset(model, train_data, epochs, steps_per_epoch, out, validation_data=None, schedule_callbacks=(),
                callbacks=(), verbose=None):
    """`model.fit` with the standard callbacks; returns the per-epoch history read back from `out/history.csv`.

    Callbacks, in order: `schedule_callbacks` (those that set SAM or rho at the start of an epoch and log
    them, e.g. `SAMWindow`, `RhoSchedule`), `LearningRateLogger` (`lr`), `CSVLogger` (`out/history.csv`,
    appended to on resume), `TensorBoard` (`out/tensorboard`), `BackupAndRestore` (`out/backup`: a killed
    run restarted with the same `out` resumes after its last completed epoch), then `callbacks`, which
    therefore see each epoch after it was backed up. `verbose` None: `outputs.fit_verbose()`.
    """
    standard = [
        LearningRateLogger(),
        keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(out, "tensorboard"), profile_batch=0),
        keras.callbacks.BackupAndRestore(os.path.join(out, "backup")),
    ]
    model.fit(
        train_data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=validation_data,
        callbacks=[*schedule_callbacks, *standard, *callbacks],
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=outputs.fit_verbose() if verbose is None else verbose,
    )
    return read_history(os.path.join(out, "history.csv"))


def read_history(path):
    """history.csv -> one dict per epoch ("epoch" counts from 1); an epoch repeated by a resumed run keeps
    its last row."""
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = int(row.pop("epoch"))
            rows[epoch] = {"epoch": epoch + 1, **{k: float(v) for k, v in row.items() if v not in ("", "NA", None)}}
    return [rows[e] for e in sorted(rows)]
