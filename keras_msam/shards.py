"""Splitting a batch into shards of m examples, running a per-shard function over them, merging.

The per-shard function is vectorized over shards with `tf.vectorized_map` (one batched pass instead
of k small ones); `shards_per_pass` bounds how many shards are vectorized at once (memory grows with
the per-shard weight copies), the rest are visited by a `tf.while_loop` over chunks.

Layer state (BatchNorm moving statistics, RNG seeds) is handed to every shard as it was before the
step, then merged as if the shards had been run one after the other (`merge_state`).
"""

import tensorflow as tf
from keras import tree

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


def map_shards(shard_fn, shards, state, kinds, shards_per_pass=None):
    """Runs `shard_fn(shard, state) -> (summed, stacked, new_state)` over stacked shards.

    Returns (sum over shards of `summed`, `stacked` concatenated over shards, merged state).
    """
    num_shards = leading_dim(shards)

    def run_chunk(chunk, ids, state):
        leaves = tree.flatten(chunk)  # vectorized_map takes no None (e.g. sample_weight=None)
        present = [t for t in leaves if t is not None]

        def fn(args):
            it = iter(args[0])
            shard = tree.pack_sequence_as(chunk, [None if t is None else next(it) for t in leaves])
            return shard_fn(shard, args[1])

        summed, stacked, new_states = tf.vectorized_map(
            fn, (present, shard_states(state, kinds, ids)), fallback_to_while_loop=True
        )
        summed = tree.map_structure(lambda t: tf.reduce_sum(t, axis=0), summed)
        return summed, stacked, merge_state(state, kinds, new_states)

    static_k = num_shards if isinstance(num_shards, int) else None
    if shards_per_pass is None or (static_k is not None and shards_per_pass >= static_k):
        return run_chunk(shards, tf.range(num_shards), state)

    # Chunks of `shards_per_pass` shards, visited in order by a while loop.
    c = shards_per_pass
    if static_k is not None and static_k % c:
        raise ValueError(
            f"shards_per_pass={c} must divide the number of shards per step ({static_k}); "
            "choose a divisor or shards_per_pass=None."
        )
    num_chunks = num_shards // c
    chunks = _map(lambda t: tf.reshape(t, tf.concat([[num_chunks, c], tf.shape(t)[1:]], 0)), shards)
    first = tree.map_structure(lambda t: t[0], chunks)
    summed0, stacked0, _ = run_chunk(first, tf.range(c), state)
    zero_sums = tree.map_structure(tf.zeros_like, summed0)
    arrays = tree.map_structure(
        lambda t: tf.TensorArray(t.dtype, size=num_chunks, element_shape=t.shape), stacked0
    )

    def body(i, sums, arrays, state):
        chunk = tree.map_structure(lambda t: t[i], chunks)
        s, st, state = run_chunk(chunk, tf.range(c) + i * c, state)
        sums = tree.map_structure(tf.add, sums, s)
        arrays = tree.map_structure(lambda a, t: a.write(i, t), arrays, st)
        return i + 1, sums, arrays, state

    _, sums, arrays, state = tf.while_loop(
        lambda i, *_: i < num_chunks, body, (tf.constant(0), zero_sums, arrays, list(state))
    )
    stacked = tree.map_structure(lambda a: unstack_shards(a.stack()), arrays)
    return sums, stacked, state
