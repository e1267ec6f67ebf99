"""keras_msam.callbacks: the SAM window over epochs, and the checks of the callbacks."""

import keras
import pytest

from keras_msam.callbacks import RhoSchedule, SAMWindow


def test_sam_window_epochs_and_checks():
    erm_to_sam = SAMWindow(0.9, 1.0, epochs=200)
    assert [e for e in range(200) if erm_to_sam.active(e)] == list(range(180, 200))
    sam_to_erm = SAMWindow(0.0, 0.5, epochs=10)
    assert [sam_to_erm.active(e) for e in range(10)] == [True] * 5 + [False] * 5
    assert not any(SAMWindow(0.0, 0.0, epochs=5).active(e) for e in range(5))
    with pytest.raises(ValueError, match="0 <= start <= end <= 1"):
        SAMWindow(0.8, 0.2, epochs=10)
    callback = RhoSchedule(lambda epoch: 0.1)
    callback.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    with pytest.raises(TypeError, match="needs a keras_msam.SAMModel"):
        callback.on_train_begin()
