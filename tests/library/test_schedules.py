"""The learning-rate schedules against hand-computed values at their boundary steps."""

import math

import keras
import numpy as np
import pytest

from keras_msam import schedules


def values(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


def test_piecewise_default_is_lr_then_tenth_then_hundredth():
    s = schedules.Piecewise(0.1, total_steps=200)
    np.testing.assert_allclose(
        values(s, [0, 99, 100, 149, 150, 199, 250]), [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001], rtol=1e-6
    )


def test_piecewise_custom_phases():
    s = schedules.Piecewise(1.0, total_steps=10, boundaries=(0.3,), factors=(2.0, 0.5))
    np.testing.assert_allclose(values(s, [0, 2, 3, 9]), [2.0, 2.0, 0.5, 0.5])


def test_cosine():
    s = schedules.Cosine(0.2, total_steps=100)
    expected = [0.2, 0.1 * (1 + math.cos(math.pi * 0.25)), 0.1, 0.0, 0.0]
    np.testing.assert_allclose(values(s, [0, 25, 50, 100, 130]), expected, atol=1e-7)


def test_cyclic_peaks_at_forty_percent():
    s = schedules.Cyclic(1.0, total_steps=100)
    np.testing.assert_allclose(values(s, [0, 20, 40, 70, 100, 120]), [0.0, 0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-6)


def test_constant():
    np.testing.assert_allclose(values(schedules.Constant(0.002), [0, 10**6]), [0.002, 0.002])


def test_large_step_decays_at_p_and_at_ninety_percent():
    s = schedules.LargeStep(0.05, total_steps=1000, decay_at=0.3)
    np.testing.assert_allclose(
        values(s, [0, 299, 300, 899, 900, 999]), [0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005], rtol=1e-6
    )


def test_large_step_without_decay_and_without_second_decay():
    np.testing.assert_allclose(values(schedules.LargeStep(0.5, 100, decay_at=1.0), [0, 95, 99]), [0.5] * 3)
    s = schedules.LargeStep(0.5, 100, decay_at=0.5, second_decay_at=None)
    np.testing.assert_allclose(values(s, [49, 50, 99]), [0.5, 0.05, 0.05], rtol=1e-6)


def test_large_step_warmup_reaches_lr_at_p():
    # lr(t) = lr0 * e^(100 t / T) with lr0 = lr * e^(-100 p): lr at p, lr / e one percent earlier.
    s = schedules.LargeStep(1.0, total_steps=1000, decay_at=0.1, warmup=True)
    expected = [math.exp(-10.0), math.exp(-5.0), math.exp(-1.0), math.exp(-0.1), 0.1, 0.01]
    np.testing.assert_allclose(values(s, [0, 50, 90, 99, 100, 900]), expected, rtol=1e-5)


def test_large_step_warmup_can_end_before_the_decay():
    s = schedules.LargeStep(1.0, total_steps=1000, decay_at=0.5, warmup=True, warmup_end=0.05)
    expected = [math.exp(-5.0), math.exp(-1.0), 1.0, 1.0, 0.1]
    np.testing.assert_allclose(values(s, [0, 40, 50, 499, 500]), expected, rtol=1e-5)


ALL = [
    schedules.Piecewise(0.1, 50, boundaries=(0.2, 0.6), factors=(1.0, 0.5, 0.25)),
    schedules.Cosine(0.1, 50),
    schedules.Cyclic(0.1, 50, peak=0.3),
    schedules.Constant(0.1),
    schedules.LargeStep(0.1, 50, decay_at=0.3, warmup=True, second_decay_at=0.8, factor=5.0, warmup_rate=20.0),
    schedules.LargeStep(0.1, 50, decay_at=0.6, warmup=True, warmup_end=0.2),
]


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
def test_config_round_trip(schedule):
    steps = range(0, 55, 5)
    restored = type(schedule).from_config(schedule.get_config())
    assert restored.get_config() == schedule.get_config()
    np.testing.assert_allclose(values(restored, steps), values(schedule, steps))
    # And through Keras's registry, as an optimizer would serialize it.
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(revived) is type(schedule)
    np.testing.assert_allclose(values(revived, steps), values(schedule, steps))


def test_schedule_drives_an_optimizer_and_survives_its_config():
    optimizer = keras.optimizers.SGD(learning_rate=schedules.LargeStep(0.1, 10, decay_at=0.5))
    w = keras.Variable(0.0)
    for _ in range(6):  # steps 0..4 at 0.1, step 5 at 0.01
        optimizer.apply_gradients([(keras.ops.ones(()), w)])
    np.testing.assert_allclose(float(w), -0.51, rtol=1e-6)
    revived = keras.optimizers.SGD.from_config(optimizer.get_config())
    assert isinstance(revived._learning_rate, schedules.LargeStep)
    assert revived._learning_rate.get_config() == optimizer._learning_rate.get_config()


@pytest.mark.parametrize(
    "make, parameter",
    [
        (lambda: schedules.Piecewise(0.1, 0), "total_steps"),
        (lambda: schedules.Piecewise(0.1, 10.5), "total_steps"),
        (lambda: schedules.Piecewise(-1, 10), "lr"),
        (lambda: schedules.Piecewise(0.1, 10, boundaries=(0.5,)), "factors"),
        (lambda: schedules.Piecewise(0.1, 10, boundaries=(0.75, 0.5)), "boundaries"),
        (lambda: schedules.LargeStep(0.1, 10, decay_at=0), "decay_at"),
        (lambda: schedules.LargeStep(0.1, 10, decay_at=1.5), "decay_at"),
        (lambda: schedules.LargeStep(0.1, 10, factor=0.5), "factor"),
        (lambda: schedules.Cyclic(0.1, 10, peak=1.0), "peak"),
    ],
)
def test_bad_arguments_name_the_parameter(make, parameter):
    with pytest.raises(ValueError, match=parameter):
        make()
