"""The models Keras users train, small enough for a CPU test, and an independent m-SAM step for them.

`ZOO[name]()` builds a `Case`: the model (built, its weights fixed by the seed), data, the compile
arguments and the loss as a plain function of (y, y_pred) for the reference. `VECTORIZABLE_MODELS`
are those that `keras_msam.vectorization` should allow vectorized passes for. `reference_sam_gradient` computes
the m-SAM gradient with a plain `tf.GradientTape` loop over the shards, calling only Keras (not
keras_msam); `GradientRecorder` is an SGD that keeps the gradients the step applied.
"""

import dataclasses
import typing

import keras
import numpy as np
import tensorflow as tf
from keras import layers as L
from keras import ops

BATCH = 16
N = 2 * BATCH + 3  # two full batches and a short one
VOCAB, SEQ, CLASSES = 50, 12, 3


@dataclasses.dataclass
class Case:
    model: keras.Model
    x: typing.Any
    y: typing.Any
    compile_kwargs: dict
    loss_fn: typing.Callable  # (y, y_pred) -> the compiled loss, without model.losses


def _sparse_ce(y, p):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, p)


def _classifier_case(model, x):
    y = np.random.default_rng(1).integers(0, CLASSES, len(x))
    kwargs = dict(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return Case(model, x, y, kwargs, _sparse_ce)


def _tokens(seed=0):
    """Token ids with zero padding at the end of each sequence (mask_zero)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, size=(N, SEQ))
    lengths = rng.integers(3, SEQ + 1, size=N)
    return np.where(np.arange(SEQ)[None] < lengths[:, None], tokens, 0).astype("int32")


def _images(size=32, channels=3, seed=0):
    return np.random.default_rng(seed).uniform(size=(N, size, size, channels)).astype("float32")


@keras.saving.register_keras_serializable(package="keras_msam_tests")
class PositionEmbedding(L.Layer):
    """A learned position embedding added to the token embeddings (keeps their mask)."""

    def __init__(self, length, dim, **kwargs):
        super().__init__(**kwargs)
        self.length, self.dim = length, dim
        self.supports_masking = True

    def build(self, input_shape):
        self.positions = self.add_weight(shape=(self.length, self.dim), initializer="glorot_uniform", name="positions")

    def call(self, x):
        return x + self.positions[None]

    def get_config(self):
        return {**super().get_config(), "length": self.length, "dim": self.dim}


def transformer():
    """A transformer encoder classifier: token + position embeddings (padding masked), multi-head
    self-attention with dropout, residuals, LayerNormalization, a GELU feed-forward block, pooling."""
    tokens = L.Input((SEQ,), dtype="int32")
    h = PositionEmbedding(SEQ, 16)(L.Embedding(VOCAB, 16, mask_zero=True)(tokens))
    attention = L.MultiHeadAttention(num_heads=2, key_dim=8, dropout=0.1)(h, h)
    h = L.LayerNormalization()(L.Add()([h, attention]))
    feed_forward = L.Dense(16)(L.Dense(32, activation="gelu")(h))
    h = L.LayerNormalization()(L.Add()([h, feed_forward]))
    outputs = L.Dense(CLASSES)(L.Dropout(0.1)(L.GlobalAveragePooling1D()(h)))
    return _classifier_case(keras.Model(tokens, outputs), _tokens())


def mobilenet_v2():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=CLASSES)
    return _classifier_case(model, _images())


def efficientnet_b0():
    """Depthwise convolutions, squeeze-excitation (Multiply), BatchNorm, stochastic depth (Dropout)."""
    model = keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=CLASSES)
    return _classifier_case(model, _images())


def lstm():
    tokens = L.Input((SEQ,), dtype="int32")
    h = L.LSTM(8)(L.Embedding(VOCAB, 8, mask_zero=True)(tokens))
    return _classifier_case(keras.Model(tokens, L.Dense(CLASSES)(h)), _tokens())


def bidirectional_gru():
    tokens = L.Input((SEQ,), dtype="int32")
    h = L.Bidirectional(L.GRU(6))(L.Embedding(VOCAB, 8, mask_zero=True)(tokens))
    return _classifier_case(keras.Model(tokens, L.Dense(CLASSES)(h)), _tokens())


def small_cnn():
    """Convolutions (zero padding, a residual), pooling of every kind, GroupNorm and BatchNorm, Dropout:
    the layers of the papers' CNNs."""
    inputs = L.Input((8, 8, 3))
    h = L.ReLU()(L.GroupNormalization(2)(L.Conv2D(4, 3)(L.ZeroPadding2D(1)(inputs))))
    residual = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(h)))
    h = L.AveragePooling2D(2)(L.MaxPooling2D()(L.Add()([h, residual])))
    features = L.Concatenate()([L.Flatten()(h), L.GlobalAveragePooling2D()(h)])
    return _classifier_case(keras.Model(inputs, L.Dense(CLASSES)(L.Dropout(0.2)(features))), _images(size=8))


def token_mixer():
    """Embeddings without attention: Embedding (padding masked), LayerNormalization, a per-token Dense,
    masked average pooling: the vectorizable parts of a text model."""
    tokens = L.Input((SEQ,), dtype="int32")
    h = L.LayerNormalization()(L.Embedding(VOCAB, 8, mask_zero=True)(tokens))
    h = L.GlobalAveragePooling1D()(L.Dense(8, activation="relu")(h))
    return _classifier_case(keras.Model(tokens, L.Dense(CLASSES)(h)), _tokens())


def two_inputs_two_outputs():
    """Two inputs, a 3-class head and a regression head, per-output losses, weights and metrics."""
    features, extra = L.Input((5,), name="features"), L.Input((2,), name="extra")
    h = L.Dense(8, activation="relu")(L.Concatenate()([features, L.Dense(4)(extra)]))
    outputs = {"cls": L.Dense(CLASSES, name="cls")(h), "reg": L.Dense(1, name="reg")(L.Dropout(0.1)(h))}
    model = keras.Model({"features": features, "extra": extra}, outputs)
    rng = np.random.default_rng(2)
    x = {"features": rng.normal(size=(N, 5)).astype("float32"), "extra": rng.normal(size=(N, 2)).astype("float32")}
    y = {"cls": rng.integers(0, CLASSES, N), "reg": rng.normal(size=(N, 1)).astype("float32")}
    kwargs = dict(
        loss={"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": keras.losses.MeanSquaredError()},
        loss_weights={"cls": 1.0, "reg": 0.5},
        metrics={"cls": ["accuracy"], "reg": [keras.metrics.MeanAbsoluteError()]},
    )

    def loss_fn(y, p):
        return _sparse_ce(y["cls"], p["cls"]) + 0.5 * keras.losses.MeanSquaredError()(y["reg"], p["reg"])

    return Case(model, x, y, kwargs, loss_fn)


@keras.saving.register_keras_serializable(package="keras_msam_tests")
class PenalizedMLP(keras.Model):
    """A subclassed model whose `call` adds an activity penalty with `add_loss`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.head = L.Dense(8, activation="tanh"), L.Dense(CLASSES)

    def call(self, x):
        h = self.hidden(x)
        self.add_loss(0.1 * ops.mean(ops.square(h)))
        return self.head(h)


def subclassed_add_loss():
    model = PenalizedMLP()
    x = np.random.default_rng(3).normal(size=(N, 6)).astype("float32")
    model(x[:1])
    return _classifier_case(model, x)


def keras_hub_bert():
    """A 2-layer BERT backbone from KerasHub, built from its config (no download), with a classifier."""
    import zoo_keras_hub

    x, y = zoo_keras_hub.bert_data(N, seed=0)
    model = zoo_keras_hub.bert_classifier(num_classes=CLASSES)
    case = _classifier_case(model, x)
    case.y = y
    return case


ZOO = {
    "transformer": transformer,
    "mobilenet_v2": mobilenet_v2,
    "efficientnet_b0": efficientnet_b0,
    "lstm": lstm,
    "bidirectional_gru": bidirectional_gru,
    "small_cnn": small_cnn,
    "token_mixer": token_mixer,
    "two_inputs_two_outputs": two_inputs_two_outputs,
    "subclassed_add_loss": subclassed_add_loss,
    "keras_hub_bert": keras_hub_bert,
}

VECTORIZABLE_MODELS = {"small_cnn", "token_mixer", "two_inputs_two_outputs"}


def build(name, seed=0, dtype="float32"):
    """The case `name`, its weights drawn from `seed`, its layers and losses computing in `dtype` (the
    policy and floatx stay set: tests/conftest.py resets them after every test)."""
    keras.config.set_dtype_policy(dtype)
    keras.config.set_floatx(dtype)
    keras.utils.set_random_seed(seed)
    return ZOO[name]()


def without_dropout(model):
    """Sets every Dropout rate (attention and stochastic-depth ones included) to 0: a step is then a
    deterministic function of the weights, which the reference can reproduce."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, L.Dropout):
            layer.rate = 0.0
        if isinstance(layer, L.MultiHeadAttention):
            layer._dropout = 0.0
    return model


def take(structure, rows):
    return keras.tree.map_structure(lambda a: a[rows], structure)


def reference_sam_gradient(model, loss_fn, x, y, m, rho):
    """sum_j |S_j| / b * grad L_j(w + eps_j), eps_j = rho g_j / ||g_j||, g_j = grad L_j(w), with
    L_j = loss_fn on shard j + the model's own losses (add_loss, regularizers), training mode; every
    shard starts from the same weights and layer state (restored after each pass). Float64 sums."""
    variables = model.trainable_variables
    weights = [v.numpy() for v in variables]
    state = [v.numpy() for v in model.non_trainable_variables]
    b = len(keras.tree.flatten(y)[0])

    def gradient(rows):
        with tf.GradientTape() as tape:
            y_pred = model(take(x, rows), training=True)
            loss = loss_fn(take(y, rows), y_pred) + sum(model.losses)
        grads = tape.gradient(loss, variables)
        for variable, value in zip(model.non_trainable_variables, state):
            variable.assign(value)
        return [np.zeros(w.shape) if g is None else tf.convert_to_tensor(g).numpy().astype(np.float64)
                for g, w in zip(grads, weights)]

    total = [np.zeros(w.shape) for w in weights]
    for start in range(0, b, m or b):
        rows = slice(start, start + (m or b))
        g = gradient(rows)
        norm = np.sqrt(sum(np.sum(t ** 2) for t in g))
        for variable, w, t in zip(variables, weights, g):
            variable.assign((w + rho * t / norm).astype(w.dtype))
        perturbed = gradient(rows)
        for variable, w in zip(variables, weights):
            variable.assign(w)
        size = len(range(b)[rows])
        total = [s + size / b * t for s, t in zip(total, perturbed)]
    return total


class GradientRecorder(keras.optimizers.SGD):
    """SGD that keeps a copy of the last gradient it applied to each variable (`recorded`)."""

    def build(self, variables):
        super().build(variables)
        self.recorded = [self.add_variable_from_reference(v, "recorded") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        self.recorded[self._get_variable_index(variable)].assign(gradient)
        super().update_step(gradient, variable, learning_rate)
