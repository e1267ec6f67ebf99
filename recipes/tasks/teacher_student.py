"""Teacher-student regression: inputs labelled by a small ReLU teacher, learned by a two-layer ReLU student
(`two_layer_relu`).

The sparse-features paper's setting (`papers_data`, `papers_student`; `utils.py`,
`fc_nets_two_layer.ipynb`): inputs on the unit sphere, f*(x) = sum_j a*_j relu(<w*_j, x>) with unit-norm
w*_j and a*_j = +-1, no biases; the student relu(x W) a without biases, W = 0.5 N(0, 1), a = 0.

`make_data`: Gaussian inputs x ~ N(0, I_d) and two teachers drawn from `np.random.default_rng(seed)`:
- "unit_sum" (our old large-step-SGD setting): f*(x) = sum_j relu(<w*_j, x>) with unit-norm w*_j;
- "signed" (the tuning recipe): f*(x) = sum_j a*_j relu(<w*_j, x>) with w*_j ~ N(0, I_d), a*_j = +-1.
"""

import numpy as np

from recipes.tasks import torch_inits


def sphere_inputs(rng, n, d):
    """n points drawn as the papers do (`rng.multivariate_normal(0, I_d, n)`, float32), divided by their norms."""
    x = rng.multivariate_normal(np.zeros(d), np.eye(d), n).astype(np.float32)
    return x / np.sqrt(np.sum(x * x, axis=1, keepdims=True))


def papers_data(n=15, d=2, teacher_width=3, n_test=1000, seed=0):
    """`utils.get_data_two_layer_relu_net(n, d, teacher_width, [1, 1], seed)`: (x [n, d], y [n], x_test, y_test,
    teacher [W1 [d, width], W2 [width, 1]]), float32.

    The inputs are the papers' NumPy draws (`RandomState(seed + 1)`, x then x_test; equal to theirs up to
    one float32 rounding of the norm). The teacher is torch's draw for the notebook's seed 0 (d = 2, 3
    neurons, `torch_inits.TWO_LAYER_TEACHER`); for other seeds or sizes the same distribution from
    NumPy (rows of W1 ~ N(0, I) normalised, W2 = sign(N(0, 1)), drawn after the inputs).
    """
    for name, value in (("n", n), ("d", d), ("teacher_width", teacher_width), ("n_test", n_test)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {name}={value!r}.")
    rng = np.random.RandomState(seed + 1)
    x, x_test = sphere_inputs(rng, n, d), sphere_inputs(rng, n_test, d)
    if (seed, d, teacher_width) == (0, 2, 3):
        w1, w2 = torch_inits.TWO_LAYER_TEACHER["W1"], torch_inits.TWO_LAYER_TEACHER["W2"]
    else:
        w1 = rng.randn(d, teacher_width)
        w1 = (w1 / np.linalg.norm(w1, axis=0)).astype(np.float32)
        w2 = np.sign(rng.randn(teacher_width, 1)).astype(np.float32)

    def label(inputs):
        return (np.maximum(inputs @ w1, 0) @ w2)[:, 0]

    return x, label(x), x_test, label(x_test), [w1, w2]


def papers_student(d=2, width=20, seed=0, scale=0.5):
    """The papers' student [W [d, width], a [width, 1]]: W = scale * N(0, 1), a = 0 (`init_gaussian([0.5, 0])`).

    Seed 0 (d = 2, width 20, scale 0.5) is torch's draw of the notebook (`torch_inits.TWO_LAYER_STUDENT`);
    other seeds draw W from `np.random.RandomState(seed)`.
    """
    if (seed, d, width, scale) == (0, 2, 20, 0.5):
        return [torch_inits.TWO_LAYER_STUDENT["W1"].copy(), torch_inits.TWO_LAYER_STUDENT["W2"].copy()]
    w = scale * np.random.RandomState(seed).randn(width, d).T
    return [w.astype(np.float32), np.zeros((width, 1), np.float32)]

TEACHERS = ("unit_sum", "signed")


def make_data(n=15, d=2, teacher_width=3, n_test=1000, seed=0, teacher="unit_sum"):
    """(x [n, d], y [n], x_test [n_test, d], y_test [n_test]) in float32: the teacher's weights are drawn
    first, then the training inputs, then the test inputs."""
    if teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {', '.join(TEACHERS)}; got teacher={teacher!r}.")
    for name, value in (("n", n), ("d", d), ("teacher_width", teacher_width), ("n_test", n_test)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {name}={value!r}.")
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, teacher_width))
    if teacher == "unit_sum":
        w = w / np.linalg.norm(w, axis=0)

        def label(x):
            return np.maximum(x @ w, 0).sum(axis=1)

    else:
        a = rng.choice([-1.0, 1.0], teacher_width)

        def label(x):
            return np.maximum(x @ w, 0.0) @ a

    x = rng.normal(size=(n, d)).astype("float32")
    x_test = rng.normal(size=(n_test, d)).astype("float32")
    return x, label(x).astype("float32"), x_test, label(x_test).astype("float32")


def initial_weights(d, width, init_scale=1.0, seed=1):
    """Student weights [W ~ N(0, s^2 / d) [d, width], b = 0, a ~ N(0, s^2 / width) [width, 1]], s = init_scale."""
    rng = np.random.default_rng(seed)
    kernel = init_scale * rng.normal(size=(d, width)) / np.sqrt(d)
    return [kernel, np.zeros(width), init_scale * rng.normal(size=(width, 1)) / np.sqrt(width)]
