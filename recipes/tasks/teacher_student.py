"""Teacher-student regression: Gaussian inputs x ~ N(0, I_d) labelled by a small ReLU teacher, learned by a
two-layer ReLU student (`two_layer_relu`).

Two teachers, both drawn from `np.random.default_rng(seed)`:
- "unit_sum" (the large-step-SGD recipe): f*(x) = sum_j relu(<w*_j, x>) with unit-norm w*_j;
- "signed" (the tuning recipe): f*(x) = sum_j a*_j relu(<w*_j, x>) with w*_j ~ N(0, I_d), a*_j = +-1.
"""

import numpy as np

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
