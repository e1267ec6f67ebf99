"""The shard engine: a batch cut into shards of m examples, a per-shard function run over them, merged.

`run_shards(shard_fn, batch, state, kinds, m, layout)` is the one entry point. It cuts the batch
(x, y, sample_weight) into k = b // m full shards and, when m does not divide b, a last smaller shard;
runs `shard_fn(shard, shard_state) -> (summed, y_pred, new_state)` on every shard; and returns

    sum_j |S_j| / b * summed_j,   the predictions in batch order,   the state after all shards,

where the layer state (BatchNorm moving statistics, RNG seeds) is merged as if the shards had run one
after the other (`merge_state`); shard j draws its random numbers from its own seed (offset j).

How the k full shards run is a `Layout` (see `keras_msam.layouts`, which also chooses one):
- `per_pass == 1`: plain passes, one shard at a time;
- `per_pass > 1`: passes of that many shards as one `tf.vectorized_map` (every shard with its own
  copy of the weights inside the pass; `keras_msam.pfor_conv` turns convolutions with per-shard
  filters into batched matmuls);
- the passes are unrolled in Python, or visited by a `tf.while_loop` (`loop=True`).
A batch size known only at run time (a traced step with an unknown batch dimension) runs its full
shards as a loop of plain passes and the last shard under a `tf.cond`.
"""

import tensorflow as tf
from keras import tree

from keras_msam import pfor_conv
from keras_msam.layouts import Layout

pfor_conv.install()  # per-shard-filter convolutions as batched matmuls inside vectorized_map

EMA, SEED, LAST = "ema", "seed", "last"


def leading_dim(structure):
    """Batch size (static int if known, else a scalar tensor) of the first non-None leaf."""
    first = next(t for t in tree.flatten(structure) if t is not None)
    static = first.shape[0]
    return static if static is not None else tf.shape(first)[0]


def _map(fn, structure):
    return tree.map_structure(lambda t: None if t is None else fn(t), structure)


def _stack_shards(structure, num_shards, m):
    """[num_shards * m, ...] -> [num_shards, m, ...] for every leaf."""
    return _map(lambda t: tf.reshape(t, tf.concat([[num_shards, m], tf.shape(t)[1:]], 0)), structure)


def _unstack_shards(structure):
    """[num_shards, m, ...] -> [num_shards * m, ...] for every leaf."""
    return _map(lambda t: tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0)), structure)


def slice_batch(structure, start, stop=None):
    return _map(lambda t: t[start:stop], structure)


def shard_states(state, kinds, shard_ids):
    """Per-shard copies [len(shard_ids), ...] of the layer state; RNG seeds offset by the shard id."""
    stacked = []
    for value, (kind, _) in zip(state, kinds):
        copies = tf.repeat(value[None], tf.shape(shard_ids)[0], axis=0)
        if kind == SEED:
            offset = tf.stack([tf.cast(shard_ids, value.dtype), tf.zeros_like(shard_ids, value.dtype)], 1)
            copies = copies + tf.reshape(offset, tf.concat([tf.shape(offset), tf.ones_like(tf.shape(value)[1:])], 0))
        stacked.append(copies)
    return stacked


def merge_state(state, kinds, per_shard_state):
    """Combines per-shard updated state [c, ...] into the state after running the c shards in order.

    EMA (BatchNorm moving statistics, momentum mu): each shard returned o_j = mu * s + (1 - mu) * x_j,
    running them in order gives mu^c s + sum_j mu^(c - j) (o_j - mu s), j = 1..c.
    SEED: the increment one call makes. LAST: the last shard's value.
    """
    merged = []
    for s, outs, (kind, momentum) in zip(state, per_shard_state, kinds):
        if kind == EMA:
            c = tf.shape(outs)[0]
            powers = tf.pow(tf.cast(momentum, s.dtype), tf.cast(tf.range(c - 1, -1, -1), s.dtype))
            powers = tf.reshape(powers, tf.concat([[c], tf.ones_like(tf.shape(s))], 0))
            total = tf.reduce_sum(powers * (outs - momentum * s[None]), axis=0)
            merged.append(tf.pow(tf.cast(momentum, s.dtype), tf.cast(c, s.dtype)) * s + total)
        elif kind == SEED:
            merged.append(tf.stack([s[0], outs[0][1]]))  # shard offsets live in [0], draws in [1]
        else:
            merged.append(outs[-1])
    return merged


def run_shards(shard_fn, batch, state, kinds, m, layout=None):
    """Runs `shard_fn` over the shards of m examples of `batch`; see the module docstring.

    Args:
        shard_fn: (shard, shard_state) -> (summed, y_pred, new_state); `summed` a structure of tensors
            (e.g. gradients and losses of the shard), `y_pred` the shard's predictions.
        batch: a structure of tensors [b, ...] (None leaves allowed, e.g. sample_weight=None).
        state: list of layer-state tensors; `kinds`: their merge rule (EMA/SEED/LAST, momentum).
        m: examples per shard, an int <= b (b static), or any positive int (b dynamic).
        layout: the `Layout` of the full shards (static b only; None: one plain pass per shard).

    Returns:
        (sum_j |S_j| / b * summed_j, predictions [b, ...], merged state).
    """
    b = leading_dim(batch)
    if not isinstance(b, int):
        return _run_dynamic(shard_fn, batch, state, kinds, m)
    if not 1 <= m <= b:
        raise ValueError(f"m={m} must be in [1, {b}] (the batch size) here.")
    layout = Layout(per_pass=1) if layout is None else layout
    k, rest = b // m, b % m
    summed, y_pred, states = _run_full_shards(shard_fn, slice_batch(batch, 0, k * m), state, kinds, k, m, layout)
    summed = _scaled(summed, m / b)
    if rest:
        r_summed, r_pred, r_state = shard_fn(slice_batch(batch, k * m), [s[0] for s in shard_states(state, kinds, [k])])
        summed = tree.map_structure(tf.add, summed, _scaled(r_summed, rest / b))
        y_pred = tree.map_structure(lambda a, c: tf.concat([a, c], 0), y_pred, r_pred)
        states = [tf.concat([s, r[None]], 0) for s, r in zip(states, r_state)]
    return summed, y_pred, merge_state(state, kinds, states)


def _scaled(structure, factor):
    return tree.map_structure(lambda t: t * tf.cast(factor, t.dtype), structure)


def _run_full_shards(shard_fn, batch, state, kinds, k, m, layout):
    """The k full shards under `layout`: (sum over shards, predictions [k m, ...], states [k, ...])."""
    per_pass = min(layout.per_pass or k, k)
    if k % per_pass:
        raise ValueError(
            f"shards_per_pass={per_pass} must divide the number of shards per step ({k}); "
            "choose a divisor or shards_per_pass=None."
        )
    num_passes = k // per_pass
    shards = _stack_shards(batch, k, m)

    def run_pass(index):
        chunk = _map(lambda t: t[index * per_pass:(index + 1) * per_pass], shards)
        states = shard_states(state, kinds, tf.range(per_pass) + index * per_pass)
        if per_pass == 1:
            summed, y_pred, new_state = shard_fn(_map(lambda t: t[0], chunk), [s[0] for s in states])
            return summed, tree.map_structure(lambda t: t[None], (y_pred, new_state))
        return _vectorized_pass(shard_fn, chunk, states)

    if not layout.loop or num_passes == 1:
        passes = [run_pass(i) for i in range(num_passes)]
        summed = tree.map_structure(lambda *ts: tf.add_n(ts), *[p[0] for p in passes])
        y_pred, states = tree.map_structure(lambda *ts: tf.concat(ts, 0), *[p[1] for p in passes])
    else:
        summed, (y_pred, states) = _loop(run_pass, num_passes)
    return summed, _unstack_shards(y_pred), states


def _vectorized_pass(shard_fn, chunk, states):
    """One `tf.vectorized_map` over the shards of `chunk`: (sum over them, (stacked y_pred, states))."""
    leaves = tree.flatten(chunk)  # vectorized_map takes no None (e.g. sample_weight=None)
    present = [t for t in leaves if t is not None]

    def fn(args):
        it = iter(args[0])
        return shard_fn(tree.pack_sequence_as(chunk, [None if t is None else next(it) for t in leaves]), args[1])

    summed, y_pred, new_states = tf.vectorized_map(fn, (present, states), fallback_to_while_loop=True)
    return tree.map_structure(lambda t: tf.reduce_sum(t, axis=0), summed), (y_pred, new_states)


def _loop(run_pass, num_passes):
    """Passes 0..num_passes-1 in a `tf.while_loop` (pass 0 outside: it fixes the output structure).

    Returns (summed over passes, outputs of the passes concatenated along axis 0)."""
    summed, first = run_pass(0)
    arrays = tree.map_structure(
        lambda t: tf.TensorArray(t.dtype, size=num_passes, element_shape=t.shape, infer_shape=False).write(0, t),
        first,
    )

    def body(i, summed, arrays):
        pass_sum, outputs = run_pass(i)
        return (i + 1, tree.map_structure(tf.add, summed, pass_sum),
                tree.map_structure(lambda a, t: a.write(i, t), arrays, outputs))

    _, summed, arrays = tf.while_loop(lambda i, *_: i < num_passes, body, (tf.constant(1), summed, arrays))
    return summed, tree.map_structure(lambda a: a.concat(), arrays)


def _run_dynamic(shard_fn, batch, state, kinds, m):
    """A batch whose size b is known only at run time: min(m, b) examples per shard, the full shards as
    a loop of plain passes, the last smaller shard (if any) under a `tf.cond`."""
    b = leading_dim(batch)
    m = tf.minimum(tf.constant(m, tf.int32), b)
    k = b // m
    full = k * m
    shards = _stack_shards(slice_batch(batch, 0, full), k, m)

    def run_pass(index):
        states = shard_states(state, kinds, tf.reshape(index, [1]))
        summed, y_pred, new_state = shard_fn(_map(lambda t: t[index], shards), [s[0] for s in states])
        return summed, tree.map_structure(lambda t: t[None], (y_pred, new_state))

    summed, (y_pred, states) = _loop(run_pass, k)
    summed, y_pred = _scaled(summed, tf.cast(m, tf.float64) / tf.cast(b, tf.float64)), _unstack_shards(y_pred)

    def with_rest():
        r_summed, r_pred, r_state = shard_fn(slice_batch(batch, full), [s[0] for s in shard_states(state, kinds, k[None])])
        weight = tf.cast(b - full, tf.float64) / tf.cast(b, tf.float64)
        return (tree.map_structure(tf.add, summed, _scaled(r_summed, weight)),
                tree.map_structure(lambda a, c: tf.concat([a, c], 0), y_pred, r_pred),
                [tf.concat([s, r[None]], 0) for s, r in zip(states, r_state)])

    summed, y_pred, states = tf.cond(full < b, with_rest, lambda: (summed, y_pred, states))
    return summed, y_pred, merge_state(state, kinds, states)
