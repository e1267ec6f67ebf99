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


def papers_deep_lr(t, n_epochs, lr, p, warmup_factor=1.0, warmup_exp=1.0):
    """deep_nets/utils_train.py::get_lr_schedule('piecewise_0Xepochs') at fractional epoch t, as the papers
    write it: branch on warmup_exp, then on t / n_epochs against p and 0.9."""
    x = t / n_epochs
    if warmup_exp > 1.0:
        peak = warmup_exp ** (p * 100) * lr
        return warmup_exp ** (x * 100) * lr if x < p else peak / 10.0 if x < 0.9 else peak / 100.0
    if warmup_exp < 1.0:
        peak = (1 + (p * 100) ** warmup_exp) * lr
        return (1 + (x * 100) ** warmup_exp) * lr if x < p else peak / 10.0 if x < 0.9 else peak / 100.0
    if x < p:
        return np.interp([t], [0, 0.5 * n_epochs], [lr, warmup_factor * lr])[0]
    return p / 0.5 * warmup_factor * lr / (10.0 if x < 0.9 else 100.0)


# The papers' README: 100 epochs of 195 steps (50000 // 256, drop_last); step k (0-based) runs at the
# schedule's value at epoch - 1 + (i + 1) / 195, i.e. x = (k + 1) / K (train.py:113).
EPOCHS, PER_EPOCH = 100, 195
K = EPOCHS * PER_EPOCH
BOUNDARY_STEPS = [0, 1, 1948, 1949, 1950, 5848, 5849, 5850, 9748, 9749, 9750, 17548, 17549, 17550, K - 1]


@pytest.mark.parametrize(
    "lr, p, warmup_factor, warmup_exp",
    [
        (0.75, 0.5, 1.0, 1.05),  # README, no explicit regularisation: 0.75 -> 8.60 at 50 %, then 0.860, 0.0860
        (0.75, 0.3, 1.0, 1.05),
        (0.75, 0.1, 1.0, 1.05),
        (0.75, 0.5, 1.0, 0.5),  # the polynomial branch
        (0.05, 0.5, 1.0, 1.0),  # README, SOTA setting: the linear branch with wf = 1
        (0.05, 0.3, 1.0, 1.0),
        (0.05, 0.1, 1.0, 1.0),
        (0.05, 0.5, 2.0, 1.0),
        (0.05, 0.3, 3.0, 1.0),
    ],
)
def test_large_step_is_the_papers_schedule_one_step_later(lr, p, warmup_factor, warmup_exp):
    ours = schedules.LargeStep(lr, K, decay_at=p, warmup_exp=warmup_exp, warmup_factor=warmup_factor)
    theirs = [papers_deep_lr(EPOCHS * (k + 1) / K, EPOCHS, lr, p, warmup_factor, warmup_exp) for k in BOUNDARY_STEPS]
    # their step k runs at x = (k + 1) / K, ours at x = k / K: our step k + 1 is their step k
    np.testing.assert_allclose(values(ours, [k + 1 for k in BOUNDARY_STEPS]), theirs, rtol=2e-6)


def test_large_step_values_of_the_readme_commands():
    # The first steps and the decays of the two README commands (numbers from the papers' formula).
    no_reg = schedules.LargeStep(0.75, K, decay_at=0.5, warmup_exp=1.05)
    np.testing.assert_allclose(values(no_reg, [0, K // 2 - 1, K // 2, int(0.9 * K)]),
                               [0.75, 0.75 * 1.05 ** (100 * (K // 2 - 1) / K), 0.75 * 1.05**50 / 10,
                                0.75 * 1.05**50 / 100], rtol=2e-6)
    assert no_reg.peak == pytest.approx(8.600550, rel=1e-6)  # 0.75 * 1.05^50, divided by the decays
    for p, first_decay in ((0.1, 0.001), (0.3, 0.003), (0.5, 0.005)):  # lr / (10 / (2 p)), then / 10
        sota = schedules.LargeStep(0.05, K, decay_at=p)
        np.testing.assert_allclose(values(sota, [0, int(p * K) - 1, int(p * K), K - 1]),
                                   [0.05, 0.05, first_decay, first_decay / 10], rtol=1e-6)


def test_large_step_without_decay_and_without_second_decay():
    np.testing.assert_allclose(values(schedules.LargeStep(0.5, 100, decay_at=1.0), [0, 95, 99]), [0.5] * 3)
    s = schedules.LargeStep(0.5, 100, decay_at=0.5, second_decay_at=None)
    np.testing.assert_allclose(values(s, [49, 50, 99]), [0.5, 0.05, 0.05], rtol=1e-6)
    s = schedules.LargeStep(1.0, 100, decay_at=0.5, warmup_exp=1.05, second_decay_at=0.8, factor=4.0)
    np.testing.assert_allclose(values(s, [79, 80]), [1.05**50 / 4, 1.05**50 / 16], rtol=1e-6)


def papers_fc_lrs(gamma, num_iter, p, decay, warmup_factor=1.0, warmup_exponent=1.0):
    """The step size of each step of fc_nets.py::train_fc_net, as its loop sets the optimizer's lr
    (iters_percentage_linear_warmup = p, as in the notebooks)."""
    lr, lrs = gamma, []
    threshold = int(p * num_iter)
    for i in range(num_iter):
        if i <= int(p * num_iter) and int(p * num_iter) > 0:
            lr = gamma + (warmup_factor - 1) * gamma * (i / int(num_iter)) ** warmup_exponent
        if i == threshold:
            lr /= decay
        lrs.append(lr)
    return np.array(lrs)


@pytest.mark.parametrize(
    "gamma, num_iter, p, decay, factor, exponent",
    [
        (2e-4, 31623, 0.02, 2.5, 400 * 0.02, 1.0),  # fc_nets_1d_regression.ipynb c1
        (2e-4, 31623, 0.5, 3.0, 400 * 0.5, 1.0),
        (0.13, 14126, 0.0, 1.0, 1.0, 1.0),  # fc_nets_two_layer.ipynb: the constant run
        (0.455, 14126, 0.3, 4.0, 1.0, 1.0),
        (0.04, 10001, 0.1, 3.5, 6.0, 0.5),  # fc_nets_multi_layer.ipynb
        (0.04, 10001, 0.5, 5.0, 6.0, 0.5),
    ],
)
def test_warmup_decay_is_the_fc_nets_loop_at_every_step(gamma, num_iter, p, decay, factor, exponent):
    ours = schedules.WarmupDecay(gamma, num_iter, decay_at=p, decay=decay, warmup_factor=factor,
                                 warmup_exponent=exponent, dtype="float64")
    theirs = papers_fc_lrs(gamma, num_iter, p, decay, factor, exponent)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(np.arange(num_iter))), theirs, rtol=1e-12)


def test_warmup_decay_of_the_diagonal_nets_is_one_step_earlier():
    # diag_nets.py::SGD divides gamma after the step of iteration i == int(p * num_iter)
    num_iter, p, decay = 100001, 0.3, 3.4
    theirs = np.where(np.arange(num_iter) <= int(p * num_iter), 0.282, 0.282 / decay)
    ours = keras.ops.convert_to_numpy(schedules.WarmupDecay(0.282, num_iter, p, decay, dtype="float64")(
        np.arange(num_iter)))
    differ = np.flatnonzero(ours != theirs)
    np.testing.assert_array_equal(differ, [30000])  # the first decayed step: theirs 30001, ours 30000
    assert (ours[30000], theirs[30000]) == (0.282 / decay, 0.282)
    assert ours[0] == 0.282  # float64: the step size itself, not its float32 rounding


def test_warmup_decay_second_decay_and_float32():
    s = schedules.WarmupDecay(0.22, 4000, decay_at=0.1, decay=10.0, second_decay_at=0.9)
    np.testing.assert_allclose(values(s, [0, 399, 400, 3599, 3600, 3999]),
                               [0.22, 0.22, 0.022, 0.022, 0.0022, 0.0022], rtol=1e-6)
    assert s(0).dtype == "float32"


ALL = [
    schedules.Piecewise(0.1, 50, boundaries=(0.2, 0.6), factors=(1.0, 0.5, 0.25)),
    schedules.Cosine(0.1, 50),
    schedules.Cyclic(0.1, 50, peak=0.3),
    schedules.Constant(0.1),
    schedules.Constant(0.1, dtype="float64"),
    schedules.LargeStep(0.1, 50, decay_at=0.3, warmup_exp=1.05, second_decay_at=0.8, factor=5.0),
    schedules.LargeStep(0.1, 50, decay_at=0.6, warmup_exp=0.5, second_decay_at=None),
    schedules.LargeStep(0.1, 50, decay_at=0.1, warmup_factor=2.0),
    schedules.WarmupDecay(0.1, 50, decay_at=0.3, decay=2.5, warmup_factor=6.0, warmup_exponent=0.5),
    schedules.WarmupDecay(0.1, 50, decay_at=0.0, second_decay_at=0.5, dtype="float64"),
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
        (lambda: schedules.LargeStep(0.1, 10, warmup_exp=0), "warmup_exp"),
        (lambda: schedules.LargeStep(0.1, 10, warmup_exp=1.05, warmup_factor=2.0), "warmup_factor"),
        (lambda: schedules.LargeStep(0.1, 10, dtype="float16"), "dtype"),
        (lambda: schedules.WarmupDecay(0.1, 10, decay_at=-0.1), "decay_at"),
        (lambda: schedules.WarmupDecay(0.1, 10, decay=0.5), "decay"),
        (lambda: schedules.WarmupDecay(0.1, 10, warmup_exponent=0), "warmup_exponent"),
        (lambda: schedules.WarmupDecay(0.1, 10, decay_at=0.5, second_decay_at=0.3), "second_decay_at"),
        (lambda: schedules.Cyclic(0.1, 10, peak=1.0), "peak"),
    ],
)
def test_bad_arguments_name_the_parameter(make, parameter):
    with pytest.raises(ValueError, match=parameter):
        make()
