"""keras_msam.models: PreAct ResNet layout, parameter counts, norms, init, weight decay, training."""

import keras
import numpy as np
import pytest

from keras_msam import SAMModel
from keras_msam.models import REGISTRY, get_model, preact_resnet
from small_problems import class_images


def _trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_resnet18_cifar10_parameter_count():
    model = get_model("resnet18", num_classes=10)
    # PreAct ResNet-18 with a final norm before the pooling, as in the papers' code: ~11.2M
    assert _trainable_count(model) == 11_172_170
    assert model.output_shape == (None, 10)
    cifar100 = preact_resnet(18, num_classes=100)
    assert _trainable_count(cifar100) - _trainable_count(model) == 90 * 512 + 90


def test_resnet34_blocks_and_count():
    model = get_model("resnet34", num_classes=10)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D) and l.name.endswith("conv1")]
    assert len(convs) == 3 + 4 + 6 + 3
    assert 21.2e6 < _trainable_count(model) < 21.4e6


def test_group_norm_uses_width_over_two_groups_everywhere():
    for name, width in (("tiny", 8), ("resnet18", 64)):
        model = get_model(name, norm="group")
        norms = [l for l in model.layers if isinstance(l, keras.layers.GroupNormalization)]
        assert norms and all(l.groups == width // 2 for l in norms)
        assert not any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
    wide = get_model("tiny", norm="group", width=16)
    assert {l.groups for l in wide.layers if isinstance(l, keras.layers.GroupNormalization)} == {8}


def test_layout_no_input_normalisation_no_conv_bias_kaiming_init():
    model = get_model("resnet18")
    assert isinstance(model.layers[1], keras.layers.Conv2D)  # straight from the [0, 1] inputs
    assert not any(isinstance(l, (keras.layers.Normalization, keras.layers.Rescaling)) for l in model.layers)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert all(not l.use_bias for l in convs)
    kernel = model.get_layer("stage4_block2_conv2").kernel.numpy()  # 3x3x512 -> fan_in 4608
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / 4608), rtol=0.02)
    assert np.abs(kernel).max() > 4.5 * np.sqrt(2.0 / 4608)  # untruncated normal, like PyTorch's
    shortcuts = [l.name for l in convs if "shortcut" in l.name]
    assert shortcuts == ["stage2_block1_shortcut", "stage3_block1_shortcut", "stage4_block1_shortcut"]


def test_weight_decay_is_half_lambda_squared_norm_of_all_weights():
    model = get_model("tiny", weight_decay=5e-4)
    expected = 0.5 * 5e-4 * sum(float(np.sum(np.square(v.numpy()))) for v in model.trainable_variables)
    assert len(model.losses) == len(model.trainable_variables)  # every kernel, bias, gamma and beta
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)
    assert not get_model("tiny").losses


def test_registry_and_clear_errors():
    assert set(REGISTRY) == {"resnet18", "resnet34", "tiny"}
    with pytest.raises(ValueError, match=r"'resnet50'.*resnet18.*resnet34.*tiny"):
        get_model("resnet50")
    with pytest.raises(ValueError, match="norm must be one of"):
        get_model("tiny", norm="layer")
    with pytest.raises(ValueError, match="depth=50"):
        preact_resnet(50)
    with pytest.raises(ValueError, match="width must be an even int"):
        preact_resnet((1,), width=7)
    custom = preact_resnet((1, 1, 1), width=4, num_classes=3, input_shape=(16, 16, 3))
    assert custom.output_shape == (None, 3)
    assert custom.get_layer("stage3_block1_conv1").filters == 16


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
