"""Splitting a batch into shards of m examples, running a per-shard function over them, merging.

The per-shard function is vectorized over shards with `tf.vectorized_map` (one batched pass instead
of k small ones); `shards_per_pass` bounds how many shards are vectorized at once (memory grows with
the per-shard weight copies), the rest are visited by a `tf.while_loop` over chunks.

Layer state (BatchNorm moving statistics, RNG seeds) is handed to every shard as it was before the
step, then merged as if the shards had been run one after the other (`merge_state`).
"""

import tensorflow as tf
from keras import tree

from keras_msam import pfor_conv

pfor_conv.install()  # per-shard-filter convolutions as batched matmuls inside vectorized_map

EMA, SEED, LAST = "ema", "seed", "last"


def leading_dim(structure):
    """Batch size (static int if known, else a scalar tensor) of the first non-None leaf."""
    first = next(t for t in tree.flatten(structure) if t is not None)
    static = first.shape[0]
    return static if static is not None else tf.shape(first)[0]


def _map(fn, structure):
    return tree.map_structure(lambda t: None if t is None else fn(t), structure)


def stack_shards(structure, num_shards, m):
    """[num_shards * m, ...] -> [num_shards, m, ...] for every leaf."""
    return _map(lambda t: tf.reshape(t, tf.concat([[num_shards, m], tf.shape(t)[1:]], 0)), structure)


def unstack_shards(structure):
    """[num_shards, m, ...] -> [num_shards * m, ...] for every leaf."""
    return _map(lambda t: tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0)), structure)


def slice_batch(structure, start, stop=None):
    return _map(lambda t: t[start:stop], structure)


def shard_states(state, kinds, shard_ids):
    """Per-shard copies of the layer state; RNG seeds are offset so each shard draws its own masks."""
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


def map_shards(shard_fn, shards, state, kinds, shards_per_pass=None, max_unrolled=16):
    """Runs `shard_fn(shard, state) -> (summed, stacked, new_state)` over stacked shards [k, m, ...].

    The k shards run in passes of `shards_per_pass` (None: all k in one pass); a pass of several
    shards is one `tf.vectorized_map`, a pass of one shard is a plain call. Up to `max_unrolled`
    passes are unrolled in Python (XLA compiles them well), more go through a `tf.while_loop`.
    Every shard starts from the same `state` (its own RNG seed); the new states are merged once.
    `summed` is reduced within each pass, so memory holds one pass's per-shard copies at a time.

    Returns (sum over shards of `summed`, `stacked` concatenated over shards, merged state).
    """
    num_shards = leading_dim(shards)
    if not isinstance(num_shards, int):  # batch size known only at run time: one vectorized pass
        shards_per_pass = None
    per_pass = num_shards if shards_per_pass is None else shards_per_pass
    if shards_per_pass is not None and num_shards % per_pass:
        raise ValueError(
            f"shards_per_pass={per_pass} must divide the number of shards per step ({num_shards}); "
            "choose a divisor or shards_per_pass=None."
        )
    num_passes = 1 if shards_per_pass is None else num_shards // per_pass

    def run_pass(index):
        chunk = _map(lambda t: t[index * per_pass:(index + 1) * per_pass], shards)
        states = shard_states(state, kinds, tf.range(per_pass) + index * per_pass)
        if isinstance(per_pass, int) and per_pass == 1:
            summed, stacked, new_states = shard_fn(_map(lambda t: t[0], chunk), [s[0] for s in states])
            return summed, tree.map_structure(lambda t: t[None], (stacked, new_states))
        leaves = tree.flatten(chunk)  # vectorized_map takes no None (e.g. sample_weight=None)
        present = [t for t in leaves if t is not None]

        def fn(args):
            it = iter(args[0])
            return shard_fn(tree.pack_sequence_as(chunk, [None if t is None else next(it) for t in leaves]), args[1])

        summed, stacked, new_states = tf.vectorized_map(fn, (present, states), fallback_to_while_loop=True)
        return tree.map_structure(lambda t: tf.reduce_sum(t, axis=0), summed), (stacked, new_states)

    if shards_per_pass is None or num_passes <= max_unrolled:
        passes = [run_pass(i) for i in range(num_passes)]
        summed = tree.map_structure(lambda *ts: tf.add_n(ts), *[p[0] for p in passes])
        stacked, new_states = tree.map_structure(lambda *ts: tf.concat(ts, 0), *[p[1] for p in passes])
    else:
        summed, first = run_pass(0)
        arrays = tree.map_structure(
            lambda t: tf.TensorArray(t.dtype, size=num_passes, element_shape=t.shape).write(0, t), first
        )

        def body(i, summed, arrays):
            pass_sum, outputs = run_pass(i)
            return (i + 1, tree.map_structure(tf.add, summed, pass_sum),
                    tree.map_structure(lambda a, t: a.write(i, t), arrays, outputs))

        _, summed, arrays = tf.while_loop(lambda i, *_: i < num_passes, body, (tf.constant(1), summed, arrays))
        stacked, new_states = tree.map_structure(lambda a: unstack_shards(a.stack()), arrays)
    return summed, stacked, merge_state(state, kinds, new_states)
