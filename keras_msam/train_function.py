"""The train and test functions of `SAMModel`: every batch shape gets its own compiled step.

Keras traces its step once with the dataset's element spec. NumPy input whose size the batch size
does not divide, and a `tf.data` pipeline without `drop_remainder=True`, have an unknown batch
dimension there, so every step of the epoch would run a step built for any batch size. Here the
batches are taken from the iterator eagerly and the compiled step is a `tf.function` keyed by the
batch's shapes and by `StepOptions` (SAM on or off, the shard layout): each distinct batch size is
traced once with static shapes (the short last batch too), switching SAM on and off reuses both traces,
and XLA always sees static shapes.

Under `shards_per_pass="auto"` the first batch size of training is tuned: the first steps run the
candidate layouts (`keras_msam.layouts.LayoutTuner`), each a real training step, and the fastest is
kept; other batch sizes use the static guess.

Distribution: the step runs under `strategy.run` and the logs are averaged over the replicas inside
the step (`all_reduce("MEAN")` in replica context), which also works under
`MultiWorkerMirroredStrategy` (Keras' own reduction fails there on scalar logs, keras-team/keras#20585).
"""

import time
import typing
import warnings

import tensorflow as tf
from keras import tree
from keras.src.utils import io_utils

from keras_msam import layouts
from keras_msam.layouts import Layout


class StepOptions(typing.NamedTuple):
    """The Python-side settings a compiled train step is specialised for: part of its cache key (a tuple
    of plain values: `tf.function` keys other Python objects by identity, and would trace every call)."""

    sam_enabled: bool = True
    layout: typing.Optional[Layout] = None
    jit_update: bool = False  # compile the update (not the whole step) with XLA: several replicas


def _local_values(value):
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values
    return (value,)


def per_replica_batch(data):
    """The static batch size each replica gets (the largest, if they differ) of a batch (None if unknown)."""
    sizes = [
        t.shape[0]
        for leaf in tree.flatten(data)
        if leaf is not None
        for t in _local_values(leaf)
        if getattr(t, "shape", None) is not None and len(t.shape) > 0
    ]
    return max(sizes) if sizes and None not in sizes else None


def _shape_key(data):
    return tuple(
        tuple(t.shape) if hasattr(t, "shape") else type(t).__name__
        for leaf in tree.flatten(data)
        for t in ((None,) if leaf is None else _local_values(leaf))
    )


def all_reduce(values, strategy, reduction):
    """Inside a replica: `values` reduced over all replicas (of every worker); as they are with one."""
    context = tf.distribute.get_replica_context()
    if context.num_replicas_in_sync == 1:
        return values
    local_devices = strategy.extended.worker_devices
    if len(local_devices) == 1:  # one replica per worker: its values carry no device, collectives need one
        with tf.device(local_devices[0]):
            values = tree.map_structure(tf.identity, values)
    return context.all_reduce(reduction, values)


class StepFunction:
    """`function(iterator)` for Keras' fit/evaluate loops: up to `steps_per_execution` eager batches,
    each through a compiled step specialised for its shapes and options."""

    def __init__(self, model, step_fn, options_fn):
        self.model = model
        self.step_fn = step_fn  # (data, StepOptions) -> logs of one replica
        self.options_fn = options_fn  # (data) -> StepOptions of this batch, or raises a clear error
        strategy = model.distribute_strategy
        # XLA cannot compile a function that reaches the variables of several devices: with several
        # replicas the model compiles its update per replica instead (StepOptions.jit_update).
        self.jit_update = bool(model.jit_compile) and strategy.num_replicas_in_sync > 1

        def replica_step(data, options):
            return all_reduce(self.step_fn(data, options), strategy, "MEAN")

        def run(data, options):
            logs = strategy.run(replica_step, args=(data, options))
            return tree.map_structure(lambda v: _local_values(v)[0], logs)

        jit_step = bool(model.jit_compile) and not self.jit_update
        self.compiled = run if model.run_eagerly else tf.function(run, jit_compile=jit_step, autograph=False)

    def __call__(self, iterator):
        outputs = None
        for _ in range(max(1, int(self.model.steps_per_execution))):
            try:
                data = next(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                if outputs is None:
                    raise StopIteration
                break
            outputs = self.step(data)
        return outputs

    def step(self, data):
        return self.compiled(data, self.options_fn(data))


class TrainFunction(StepFunction):
    """The train function: StepFunction plus layout tuning on the first batch size of training."""

    def __init__(self, model):
        super().__init__(model, model._train_step, self._options)
        self.tuners = {}  # batch shape key -> LayoutTuner

    def _options(self, data):
        """SAM on/off and, while the first batch size of training is being tuned, the layout to time."""
        model = self.model
        batch = per_replica_batch(data)
        model.check_batch(batch)
        tuner = self._tuner(data, batch) if model.sam_enabled else None
        return StepOptions(model.sam_enabled, None if tuner is None else tuner.layout(), self.jit_update)

    def _tuner(self, data, batch):
        """The LayoutTuner of this batch shape: only the first batch size of training is tuned, and only
        under shards_per_pass="auto" with at least 2 shards (other steps use `SAMModel.layout_for`)."""
        model = self.model
        key = _shape_key(data)
        if key not in self.tuners and not self.tuners and model.shards_per_pass == "auto" and batch:
            num_shards = model.num_shards(batch)
            on_gpu = bool(tf.config.list_logical_devices("GPU"))
            options = layouts.candidates(num_shards, model.bytes_per_shard(), model.jit_compile, on_gpu,
                                         model.vectorizable)
            if num_shards > 1 and not model.vectorizable:
                warnings.warn(f"SAMModel runs its {num_shards} shards in plain passes, one at a time: the model's "
                              f"{model.unvectorizable} is not one that vectorized passes support "
                              "(keras_msam.vectorization).", stacklevel=2)
            tuner = self.tuners[key] = layouts.LayoutTuner(options)
            if tuner.chosen is not None:  # a single candidate: nothing to time
                model.shard_layouts[batch] = tuner.chosen
        return self.tuners.get(key)

    def step(self, data):
        options = self.options_fn(data)
        tuner = self.tuners.get(_shape_key(data)) if options.layout is not None else None
        if tuner is None or tuner.chosen is not None:
            return self.compiled(data, options)
        start = time.perf_counter()
        outputs = self.compiled(data, options)
        tree.flatten(outputs)[0].numpy()  # wait for the step to finish (asynchronous devices)
        tuner.record(options.layout, time.perf_counter() - start)
        if tuner.chosen is not None:
            self._report(per_replica_batch(data), tuner)
        return outputs

    def _report(self, batch, tuner):
        model = self.model
        num_shards = model.num_shards(batch)
        model.shard_layouts[batch] = tuner.chosen
        model.layout_reports[batch] = tuner.report(num_shards)
        io_utils.print_msg(
            f"SAMModel shard layout for {num_shards} shards of m={model.shard_size(batch)} "
            f"(per-replica batch {batch}): {model.layout_reports[batch]}"
        )
