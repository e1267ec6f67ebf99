"""Each task's data and model, defined once and shared by every recipe that trains on it.

    diag_net          sparse regression and the diagonal linear network f(x) = <x, u * v>
    relu_1d           the 12-point 1D regression and its 1 -> width -> 1 ReLU network
    teacher_student   Gaussian inputs labelled by a small ReLU teacher, and a two-layer ReLU student
    two_layer_relu    the d -> width -> 1 ReLU network both of the last two train
    images            CIFAR-10 / CIFAR-100 (TFDS) or synthetic images, label noise, tf.data pipelines
"""
