"""A KerasHub model for the test model zoo: a tiny BERT classifier built from its config (nothing downloaded).

`bert_classifier` is a functional `keras.Model` over the three inputs of `keras_hub.models.BertBackbone`
({"token_ids", "segment_ids", "padding_mask"}, int32 [batch, seq_len]) whose pooled output feeds a
`Dense(num_classes)` of logits; `bert_data` makes matching random inputs and labels. Needs `keras-hub`
(the `dev` extra); importing this module imports it.
"""

import keras
import keras_hub
import numpy as np

INPUTS = ("token_ids", "segment_ids", "padding_mask")


def bert_classifier(vocab=100, seq_len=16, num_classes=3, seed=0):
    """A built 2-layer, 2-head BERT (hidden 32, feed-forward 64, no dropout) -> Dense(num_classes) logits.

    The same seed gives the same weights: it seeds Python, NumPy and TensorFlow globally
    (`keras.utils.set_random_seed(seed)`) before building, since KerasHub's initializers take no seed.
    """
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocab,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        dropout=0.0,
        max_sequence_length=seq_len,
    )
    inputs = {name: keras.Input((seq_len,), dtype="int32", name=name) for name in INPUTS}
    pooled = backbone(inputs)["pooled_output"]
    logits = keras.layers.Dense(
        num_classes, kernel_initializer=keras.initializers.GlorotUniform(seed=seed), name="logits"
    )(pooled)
    return keras.Model(inputs, logits, name="bert_classifier")


def bert_data(n, seed=0, vocab=100, seq_len=16, num_classes=3):
    """(x, y): x a dict of int32 [n, seq_len] arrays keyed as the model's inputs, y int32 [n] labels.

    Each sequence has a random length in [2, seq_len]: token ids in [1, vocab) up to it and 0 (padding)
    after, padding_mask 1 on the tokens, segment 0 on the first half of the tokens and 1 on the rest.
    The label is the second token id mod num_classes, so the model can learn it.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, seq_len + 1, size=n)
    positions = np.arange(seq_len)[None, :]
    padding_mask = (positions < lengths[:, None]).astype("int32")
    token_ids = rng.integers(1, vocab, size=(n, seq_len)).astype("int32") * padding_mask
    segment_ids = ((positions >= (lengths[:, None] + 1) // 2) & (padding_mask == 1)).astype("int32")
    y = (token_ids[:, 1] % num_classes).astype("int32")
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}, y
