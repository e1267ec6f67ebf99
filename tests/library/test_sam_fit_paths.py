"""`fit` on the inputs users feed it: NumPy whose size is not a multiple of the batch, tf.data without
`drop_remainder`, every kind of m, jit on and off, one device and MirroredStrategy, for a conv net with
biases, BatchNorm and Dropout. Each run must equal the same steps taken one by one on static-shape batches."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_msam import SAMModel

N, BATCH = 21, 8  # batches of 8, 8 and 5 (per replica under 2 replicas: 4, 4 and 3 + 2)


def conv_net():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, activation="relu"),  # with bias
            keras.layers.BatchNormalization(momentum=0.8),
            keras.layers.Dropout(0.3),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 6, 6, 2)).astype("float32"), rng.integers(0, 4, N)


@pytest.fixture(scope="module")
def mirrored():
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())


def compiled(strategy, m, jit, shards_per_pass=None):
    """shards_per_pass=None: all shards of a step in one vectorized pass, the path on which a short last
    batch used to crash for convolutions with biases (and one trace per batch shape whatever m)."""
    with strategy.scope():
        model = SAMModel(conv_net(), rho=0.2, m=m, shards_per_pass=shards_per_pass)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=jit,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def weights(model):
    return [v.numpy() for v in model.inner.weights]


def snapshot(model):
    """Every variable a run changes: weights, BatchNorm statistics, dropout seeds, optimizer state."""
    variables = [*model.inner.variables, *model.optimizer.variables]
    return variables, [v.numpy() for v in variables]


def restore(saved):
    for variable, value in zip(*saved):
        variable.assign(value)


def _fit_path_cases():
    """Every m, jit setting and device count; the fast loop runs m=3 (m does not divide the batches) on
    one device and mirrored, without XLA (CI runs them all)."""
    for distributed in (False, True):
        for jit in (False, True):
            for m, m_id in ((1, "m1"), (2, "m2-divides"), (3, "m3-does-not"), (None, "mNone")):
                fast = m == 3 and not jit
                yield pytest.param(m, jit, distributed, marks=() if fast else (pytest.mark.slow,),
                                   id=f"{m_id}-{'jit' if jit else 'no-jit'}-{'mirrored' if distributed else 'one-device'}")


@pytest.mark.parametrize("m, jit, distributed", _fit_path_cases())
def test_fit_on_numpy_and_on_tf_data_equals_the_same_steps_on_static_batches(m, jit, distributed, request):
    """One model per case (its compiled steps are shared by the three runs, so each batch shape is traced
    once): the epoch's 3 batches fed one by one as datasets of static shape, then `fit` on NumPy input
    (batch dimension unknown to Keras) and on `tf.data` without `drop_remainder`, each from the same start."""
    strategy = request.getfixturevalue("mirrored") if distributed else tf.distribute.get_strategy()
    x, y = data()
    model = compiled(strategy, m, jit)
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)  # momentum slots exist before the snapshot
    initial, start = weights(model), snapshot(model)
    for first in range(0, N, BATCH):
        one_batch = tf.data.Dataset.from_tensors((x[first:first + BATCH], y[first:first + BATCH]))
        assert one_batch.element_spec[0].shape[0] is not None
        model.fit(one_batch, epochs=1, verbose=0)
    expected = weights(model)
    assert max(np.max(np.abs(a - b)) for a, b in zip(expected, initial)) > 1e-2

    feeds = {
        "numpy": lambda: model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0),
        "tf.data": lambda: model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH), epochs=1, verbose=0),
    }
    for feed, run in feeds.items():
        restore(start)
        run()
        assert model.optimizer.iterations.numpy() == 3, feed
        for got, want in zip(weights(model), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=feed)


def test_short_last_shards_and_batches_warn_and_m_is_logged_as_set():
    x, y = data()
    model = compiled(tf.distribute.get_strategy(), 3, False)
    with pytest.warns(UserWarning) as records:
        history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0).history
    messages = [str(r.message) for r in records]
    assert any("m=3 does not divide the per-replica batch of 8: the last shard has 2 examples" in t for t in messages)
    assert any("m=3 does not divide the per-replica batch of 5" in t for t in messages)
    assert history["m"] == [3.0, 3.0]  # the shard size, not an average over a short last batch

    model = compiled(tf.distribute.get_strategy(), 6, False)
    with pytest.warns(UserWarning, match="a batch of 5 examples per replica is smaller than m=6: it runs as one shard"):
        history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
    assert history["m"] == [6.0]
    assert compiled(tf.distribute.get_strategy(), None, False).fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history["m"] == [8.0]


@pytest.mark.parametrize("n", [16, 21], ids=["batches-divide-n", "short-last-batch"])
def test_m_larger_than_the_batch_is_an_error_whatever_the_dataset_size(n):
    x, y = data()
    model = compiled(tf.distribute.get_strategy(), 10, False)
    with pytest.raises(ValueError, match="m=10 is larger than the per-replica batch size 8"):
        model.fit(x[:n], y[:n], batch_size=BATCH, epochs=1, verbose=0)


def test_a_step_traced_for_any_batch_size_equals_static_steps():
    """`train_step` inside a user's own tf.function with an unknown batch dimension: full shards in a loop,
    the last smaller shard under a tf.cond."""
    x, y = data()
    x, y = x[:11], y[:11]  # m=3: shards 3, 3, 3 and 2
    dynamic, static = compiled(tf.distribute.get_strategy(), 3, False), compiled(tf.distribute.get_strategy(), 3, False)
    for model in (dynamic, static):
        model.optimizer.build(model.trainable_variables)
        model._symbolic_build(data_batch=(x, y, None))
    spec = (tf.TensorSpec([None, 6, 6, 2], tf.float32), tf.TensorSpec([None], tf.int64))
    step = tf.function(lambda xb, yb: dynamic.train_step((xb, yb)), input_signature=spec)
    step(tf.constant(x), tf.constant(y))
    static.train_on_batch(x, y)
    for got, want in zip(weights(dynamic), weights(static)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_replica_without_examples_takes_an_empty_step(mirrored):
    """17 examples at batch 8 on 2 replicas: the last batch of 1 leaves one replica without examples. It
    contributes no gradient and no BatchNorm statistics (plain Keras ends with NaN weights here)."""
    x, y = data()
    model = compiled(mirrored, 2, False)
    history = model.fit(x[:17], y[:17], batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
    assert model.optimizer.iterations.numpy() == 3 and np.isfinite(history["loss"][0])
    assert all(np.all(np.isfinite(v.numpy())) for v in model.inner.variables)
