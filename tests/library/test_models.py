"""keras_msam.models: the papers' networks by name, their init, padding and parameter counts against the
papers' formulas (deep_nets/models.py), norms, weight decay, any input shape, training."""

import keras
import numpy as np
import pytest

from keras_msam import SAMModel
from keras_msam.models import REGISTRY, get_model, preact_resnet, resnet
from keras_msam.models.layers import LayerFactory
from small_problems import class_images


def _trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def _papers_count(kind, blocks, width=64, num_classes=10, in_channels=3):
    """Parameters of the papers' PyTorch nets, counted from their layer shapes (models.py)."""
    count = 9 * in_channels * width  # stem conv3x3, no bias
    if kind == "post":
        count += 2 * width  # stem BN
    cin = width
    for stage, num_blocks in enumerate(blocks):
        cout = width * 2**stage
        for index in range(num_blocks):
            changes = (stage > 0 and index == 0) or cin != cout
            if kind == "preact":  # bn1(cin), conv1, bn2(cout), conv2, 1x1 shortcut without norm
                count += 2 * cin + 9 * cin * cout + 2 * cout + 9 * cout * cout + (cin * cout if changes else 0)
            else:  # conv1, bn1, conv2, bn2, 1x1 shortcut + BN
                count += 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout + ((cin * cout + 2 * cout) if changes else 0)
            cin = cout
    if kind == "preact":
        count += 2 * cin  # final norm
    return count + cin * num_classes + num_classes  # linear with bias


# --------------------------------------------------------------------------- names, counts
@pytest.mark.parametrize("name, kind, blocks, norm", [
    ("resnet18", "preact", (2, 2, 2, 2), "batch"),
    ("resnet18_gn", "preact", (2, 2, 2, 2), "group"),
    ("resnet34", "post", (3, 4, 6, 3), "batch"),
    ("resnet34preact", "preact", (3, 4, 6, 3), "batch"),
    ("resnet34_gn", "preact", (3, 4, 6, 3), "group"),
    ("resnet_tiny", "preact", (1, 1, 1, 1), "batch"),
    ("resnet_tiny_gn", "preact", (1, 1, 1, 1), "group"),
    ("resnet18_plain", "post", (2, 2, 2, 2), "batch"),
])
def test_papers_names_mean_the_papers_networks(name, kind, blocks, norm):
    model = get_model(name)
    assert _trainable_count(model) == _papers_count(kind, blocks)
    norm_class = keras.layers.BatchNormalization if norm == "batch" else keras.layers.GroupNormalization
    other = keras.layers.GroupNormalization if norm == "batch" else keras.layers.BatchNormalization
    assert any(isinstance(l, norm_class) for l in model.layers) and not any(isinstance(l, other) for l in model.layers)
    # post-activation: BN in the shortcut, no norm after the last block; PreAct: the reverse
    assert ("stage2_block1_shortcut_norm" in [l.name for l in model.layers]) == (kind == "post")
    assert ("final_norm" in [l.name for l in model.layers]) == (kind == "preact")
    assert model.output_shape == (None, 10)


def test_published_parameter_counts():
    # the usual CIFAR ResNet-18 / -34 (post-activation) and PreAct ResNet-18 + its final BN
    assert _trainable_count(get_model("resnet18_plain")) == 11_173_962
    assert _trainable_count(get_model("resnet34")) == 21_282_122
    assert _trainable_count(get_model("resnet18")) == 11_172_170
    cifar100 = preact_resnet(18, num_classes=100)
    assert _trainable_count(cifar100) - _trainable_count(get_model("resnet18")) == 90 * 512 + 90


def test_any_input_shape_fashion_mnist():
    for name in ("resnet18_gn", "resnet34", "tiny"):
        model = get_model(name, input_shape=(28, 28, 1))
        assert model.output_shape == (None, 10)
        assert _trainable_count(model) == _trainable_count(get_model(name)) - 9 * 2 * REGISTRY[name].width
    # 28 -> 14 -> 7 -> 4 as PyTorch's floor((h + 2 - 3) / 2) + 1; the 1x1 shortcut gives the same size
    assert get_model("resnet18", input_shape=(28, 28, 1)).get_layer("stage4_block1_add").output.shape == (None, 4, 4, 512)
    odd = get_model("resnet34", input_shape=(27, 21, 3))
    assert odd.get_layer("stage2_block1_add").output.shape == (None, 14, 11, 128)
    assert np.isfinite(odd(np.random.default_rng(0).uniform(size=(2, 27, 21, 3)).astype("float32"))).all()


# --------------------------------------------------------------------------- init
def _conv_kernels(model):
    return [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_conv_init_is_kaiming_normal_fan_out(name):
    model = get_model(name)
    for layer in _conv_kernels(model):
        kernel = layer.kernel.numpy()
        kh, kw, _, c_out = kernel.shape
        expected = np.sqrt(2.0 / (c_out * kh * kw))  # PyTorch kaiming_normal_(mode='fan_out', relu)
        tolerance = 5.0 / np.sqrt(2.0 * kernel.size)  # 5 standard errors of a sample std
        assert abs(kernel.std() / expected - 1.0) < tolerance, (layer.name, kernel.std(), expected)
        assert abs(kernel.mean()) < 5.0 * expected / np.sqrt(kernel.size)
        assert not layer.use_bias
    stem = model.get_layer("stem_conv").kernel.numpy()
    assert stem.std() < 0.07  # sqrt(2/576) = 0.0589; fan_in would give sqrt(2/27) = 0.272
    big = model.get_layer("stage4_block2_conv2").kernel.numpy()
    assert np.abs(big).max() > 4.5 * big.std()  # untruncated normal, like PyTorch's


def test_final_linear_is_pytorch_default_with_zero_bias_and_norms_start_at_identity():
    model = get_model("resnet18")
    kernel, bias = (v.numpy() for v in model.get_layer("logits").weights)
    bound = 1.0 / np.sqrt(512)  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
    np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3.0), rtol=0.05)
    assert not bias.any()
    for m in (model, get_model("resnet18_gn"), get_model("resnet34")):
        for layer in m.layers:
            if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.GroupNormalization)):
                assert (layer.gamma.numpy() == 1).all() and (layer.beta.numpy() == 0).all()
                assert layer.epsilon == 1e-5
            if isinstance(layer, keras.layers.BatchNormalization):
                assert layer.momentum == 0.9  # PyTorch's 0.1
                assert (layer.moving_mean.numpy() == 0).all() and (layer.moving_variance.numpy() == 1).all()


# --------------------------------------------------------------------------- padding
def _reference_conv(x, kernel, stride, pad):
    """PyTorch's Conv2d(padding=pad, stride): y[i, j] = sum_ab K[a, b] x[s i + a - pad, s j + b - pad], 0 outside."""
    h, w = x.shape[:2]
    k = kernel.shape[0]
    padded = np.zeros((h + 2 * pad, w + 2 * pad, x.shape[2]))
    padded[pad : pad + h, pad : pad + w] = x
    out_h, out_w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    y = np.zeros((out_h, out_w, kernel.shape[3]))
    for i in range(out_h):
        for j in range(out_w):
            patch = padded[stride * i : stride * i + k, stride * j : stride * j + k]
            y[i, j] = np.einsum("abc,abcd->d", patch, kernel)
    return y


@pytest.mark.parametrize("shape", [(8, 6), (7, 10), (5, 5)])
def test_stride_two_convs_pad_one_on_every_side_like_pytorch(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, *shape, 2)).astype("float32")  # asymmetric, non-square, distinct values
    inputs = keras.Input((*shape, 2))
    layers = LayerFactory("batch", 4, 0.0)
    branch = layers.conv(inputs, 3, 3, 2, "branch")
    shortcut = layers.conv(inputs, 3, 1, 2, "shortcut")
    same = layers.conv(inputs, 3, 3, 1, "same")
    model = keras.Model(inputs, [branch, shortcut, same])
    out_branch, out_shortcut, out_same = (np.asarray(o) for o in model(x))
    for name, out, stride, pad in (("branch", out_branch, 2, 1), ("shortcut", out_shortcut, 2, 0), ("same", out_same, 1, 1)):
        kernel = model.get_layer(name).kernel.numpy()
        np.testing.assert_allclose(out[0], _reference_conv(x[0], kernel, stride, pad), atol=1e-5, err_msg=name)
    assert out_branch.shape == out_shortcut.shape  # the branch and the shortcut line up
    if shape[0] % 2 == 0:  # Keras' "same" at stride 2 pads bottom/right only: one pixel off
        keras_same = keras.layers.Conv2D(3, 3, strides=2, padding="same", use_bias=False)
        keras_same.build((1, *shape, 2))
        keras_same.kernel.assign(model.get_layer("branch").kernel)
        assert np.abs(np.asarray(keras_same(x)) - out_branch).max() > 0.1


def test_networks_pad_their_strided_convs_explicitly():
    for name in ("resnet18", "resnet34"):
        model = get_model(name)
        strided = [l for l in _conv_kernels(model) if l.strides == (2, 2)]
        assert len(strided) == 6  # conv1 and the 1x1 shortcut of the first block of stages 2-4
        for layer in strided:
            assert layer.padding == "valid"
            if layer.kernel_size == (3, 3):
                assert isinstance(model.get_layer(f"{layer.name}_pad"), keras.layers.ZeroPadding2D)


# --------------------------------------------------------------------------- norms, decay, errors, training
def test_group_norm_uses_width_over_two_groups_everywhere():
    for name, width in (("tiny", 8), ("resnet18_gn", 64)):
        model = get_model(name, norm="group")
        norms = [l for l in model.layers if isinstance(l, keras.layers.GroupNormalization)]
        assert norms and all(l.groups == width // 2 for l in norms)
    wide = get_model("tiny", norm="group", width=16)
    assert {l.groups for l in wide.layers if isinstance(l, keras.layers.GroupNormalization)} == {8}


def test_weight_decay_is_half_lambda_squared_norm_of_all_weights():
    for name in ("tiny", "resnet18_plain"):
        model = get_model(name, weight_decay=5e-4)
        expected = 0.5 * 5e-4 * sum(float(np.sum(np.square(v.numpy()))) for v in model.trainable_variables)
        assert len(model.losses) == len(model.trainable_variables)  # every kernel, bias, gamma and beta
        np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)
    assert not get_model("tiny").losses


def test_registry_and_clear_errors():
    assert {"resnet18", "resnet18_gn", "resnet34", "resnet34preact", "resnet34_gn", "resnet_tiny",
            "resnet_tiny_gn", "resnet18_plain", "tiny"} <= set(REGISTRY)
    with pytest.raises(ValueError, match=r"'resnet50'.*resnet18"):
        get_model("resnet50")
    with pytest.raises(ValueError, match="norm must be one of"):
        get_model("tiny", norm="layer")
    with pytest.raises(ValueError, match=r"'resnet18_gn' is the group-norm network.*'resnet18'"):
        get_model("resnet18_gn", norm="batch")
    with pytest.raises(ValueError, match="depth=50"):
        preact_resnet(50)
    with pytest.raises(ValueError, match="width must be an even int"):
        resnet((1,), width=7)
    with pytest.raises(ValueError, match="input_shape must be"):
        get_model("tiny", input_shape=(32, 32))
    custom = preact_resnet((1, 1, 1), width=4, num_classes=3, input_shape=(16, 16, 3))
    assert custom.output_shape == (None, 3)
    assert custom.get_layer("stage3_block1_conv1").filters == 16


@pytest.mark.slow
def test_tiny_resnet_msam_loss_decreases_on_a_fixed_batch():
    x, y = class_images(16)
    model = SAMModel(get_model("tiny", weight_decay=5e-4), rho=0.05, m=4)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    logs = [model.train_on_batch(x, y, return_dict=True) for _ in range(15)]
    losses = [log["loss"] for log in logs]
    assert losses[-1] < 0.85 * losses[0]
    assert logs[0]["sharpness"] > 0 and logs[0]["eps_norm"] == pytest.approx(0.05, rel=1e-4)
