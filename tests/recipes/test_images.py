"""recipes.tasks.images: TFDS loading (mocked), splits, label noise, the tf.data pipelines, error messages."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from recipes.tasks import images


def test_load_mocked_cifar10_splits_train_validation_test():
    with tfds.testing.mock_data(num_examples=50):
        data = images.load("cifar10")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (45, 5, 50)  # 90 % / 10 % like 45k / 5k
    assert data.x_train.shape == (45, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.num_classes == 10 and data.y_train.max() < 10
    assert not data.noisy.any() and np.array_equal(data.y_train, data.y_train_clean)


def test_load_mocked_cifar100_without_validation():
    with tfds.testing.mock_data(num_examples=20):
        data = images.load("cifar100", val_fraction=0.0)
    assert data.num_classes == 100 and len(data.y_train) == 20 and len(data.y_val) == 0


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match=r"'mnist'.*cifar10.*cifar100.*synthetic"):
        images.load("mnist")


def test_missing_data_without_download_names_dataset_and_fix(tmp_path):
    with pytest.raises(images.DatasetUnavailableError, match=r"'cifar10'.*data-dir.*download_and_prepare"):
        images.load("cifar10", data_dir=str(tmp_path), download=False)


def test_failed_download_names_dataset_and_fix(tmp_path, monkeypatch):
    def offline(self, *args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(images.DatasetUnavailableError, match=r"'cifar100'.*could not be downloaded.*ConnectionError.*--data-dir"):
        images.load("cifar100", data_dir=str(tmp_path))


def test_symmetric_noise_flips_exact_fraction_to_other_classes():
    labels = np.random.default_rng(1).integers(0, 10, size=1000)
    noisy, flipped = images.add_label_noise(labels, 0.3, 10, "symmetric", seed=3)
    assert flipped.sum() == 300  # exactly floor(p * n) labels changed
    assert np.array_equal(flipped, noisy != labels)
    assert noisy.min() >= 0 and noisy.max() < 10
    # the new labels cover all other classes (uniform over the 9 others)
    assert len(np.unique((noisy[flipped] - labels[flipped]) % 10)) == 9
    again, _ = images.add_label_noise(labels, 0.3, 10, "symmetric", seed=3)
    other, _ = images.add_label_noise(labels, 0.3, 10, "symmetric", seed=4)
    assert np.array_equal(noisy, again) and not np.array_equal(noisy, other)


def test_asymmetric_cifar10_noise_follows_class_map():
    labels = np.repeat(np.arange(10), 100)
    noisy, flipped = images.add_label_noise(labels, 0.6, 10, "asymmetric", seed=0, dataset="cifar10")
    expected = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}
    for source, target in zip(labels[flipped], noisy[flipped]):
        assert expected[int(source)] == int(target)
    assert not flipped[np.isin(labels, [0, 1, 6, 7, 8])].any()
    # 600 examples drawn from all classes; only the drawn ones of the 5 mapped classes change
    assert 0 < flipped.sum() <= 600 and abs(flipped.sum() - 300) < 60


def test_asymmetric_cifar100_noise_shifts_by_one():
    labels = np.arange(100).repeat(5)
    noisy, flipped = images.add_label_noise(labels, 0.4, 100, "asymmetric", seed=0, dataset="cifar100")
    assert flipped.sum() == 200
    assert np.array_equal(noisy[flipped], (labels[flipped] + 1) % 100)


def test_with_label_noise_keeps_clean_labels_and_mask():
    data = images.load("synthetic", synthetic_size=(200, 20))
    noisy = data.with_label_noise(0.5, "symmetric", seed=0)
    assert noisy.noisy.sum() == int(0.5 * len(noisy.y_train))
    assert np.array_equal(noisy.y_train_clean, data.y_train)
    assert np.array_equal(noisy.y_train != noisy.y_train_clean, noisy.noisy)


def test_train_dataset_static_batches_in_unit_range_with_crop_and_flip():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    y = np.arange(20, dtype=np.int32)
    ds = images.train_dataset(x, y, batch_size=8, shuffle=False, repeat=False)
    assert ds.element_spec[0].shape.as_list() == [8, 32, 32, 3]  # static: drop_remainder for XLA
    batches = list(ds)
    assert len(batches) == 2  # 20 // 8, the incomplete batch dropped
    pixels = np.concatenate([b[0].numpy() for b in batches])
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    # every augmented image is a 32x32 window of the zero-padded original, possibly flipped
    for image, label in zip(pixels, np.concatenate([b[1].numpy() for b in batches])):
        padded = np.pad(x[label] / 255.0, ((4, 4), (4, 4), (0, 0)))
        found = any(
            np.allclose(candidate, padded[i : i + 32, j : j + 32], atol=1e-6)
            for i in range(9)
            for j in range(9)
            for candidate in (image, image[:, ::-1])
        )
        assert found
    plain = next(iter(images.train_dataset(x, y, 4, augmentation=False, shuffle=False)))[0].numpy()
    np.testing.assert_allclose(plain, x[:4] / 255.0, atol=1e-6)


def test_eval_dataset_keeps_every_example():
    x = np.zeros((10, 32, 32, 3), np.uint8)
    sizes = [int(b[0].shape[0]) for b in images.eval_dataset(x, np.zeros(10, np.int32), 4)]
    assert sizes == [4, 4, 2]


def test_batch_larger_than_data_is_a_clear_error():
    with pytest.raises(ValueError, match="batch_size=64"):
        images.train_dataset(np.zeros((10, 32, 32, 3), np.uint8), np.zeros(10, np.int32), 64)


def test_synthetic_data_is_learnable_shape():
    data = images.load("synthetic", synthetic_size=(100, 30), val_fraction=0.1)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (90, 10, 30)
    # same class -> correlated images (class templates), so a net can learn it
    x = data.x_train.reshape(90, -1).astype(float)
    same = [np.corrcoef(x[i], x[j])[0, 1] for i in range(30) for j in range(30) if i < j and data.y_train[i] == data.y_train[j]]
    diff = [np.corrcoef(x[i], x[j])[0, 1] for i in range(30) for j in range(30) if i < j and data.y_train[i] != data.y_train[j]]
    assert np.mean(same) > np.mean(diff) + 0.2
