"""recipes.tasks.images: TFDS loading (mocked), Fashion-MNIST IDX files, splits, label noise, the tf.data
pipelines, error messages, the TFDS download path offline."""

import configparser
import os
import socket
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds
from idx_files import write_fashion_mnist, write_idx

from recipes.tasks import images

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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

    monkeypatch.setattr(images, "_reachable", lambda host, port, timeout: True)  # the probe passes
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(images.DatasetUnavailableError, match=r"'cifar100'.*download failed.*ConnectionError.*--data-dir"):
        images.load("cifar100", data_dir=str(tmp_path))


# --------------------------------------------------------------------------- the TFDS download, offline
def _no_network(monkeypatch):
    """Every connection and name lookup fails at once (the tests never reach the network)."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_offline_download_fails_after_one_bounded_probe_and_leaves_nothing(tmp_path, monkeypatch):
    _no_network(monkeypatch)

    def must_not_run(self, *args, **kwargs):
        raise AssertionError("TFDS's download (and its minutes of retries) must not start when the host is unreachable")

    probes = []
    real_probe = images._reachable

    def probe(host, port, timeout):
        probes.append((host, port, timeout, real_probe(host, port, timeout)))
        return probes[-1][-1]

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", must_not_run)
    monkeypatch.setattr(images, "_reachable", probe)
    with pytest.raises(images.DatasetUnavailableError) as error:
        images.load("cifar10", data_dir=str(tmp_path / "tfds"))
    # one probe of the one download host, bounded by PROBE_TIMEOUT_S, and nothing after it failed
    assert probes == [("www.cs.toronto.edu", 443, images.PROBE_TIMEOUT_S, False)]
    message = str(error.value)
    assert "'cifar10'" in message and "www.cs.toronto.edu:443 did not answer" in message
    assert "download_and_prepare()" in message and "--data-dir" in message  # the advice
    assert not os.path.exists(tmp_path / "tfds" / "cifar10")


def test_the_probe_gives_up_on_a_connection_that_hangs(monkeypatch):
    """A name lookup ignores socket timeouts: `_reachable` answers False without waiting for it to end."""
    entered, released, ended = threading.Event(), threading.Event(), threading.Event()

    def hang(*args, **kwargs):
        entered.set()
        released.wait(timeout=30)  # until the test lets it go (a probe that waits for it fails below)
        ended.set()
        raise OSError("released")

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        assert images._reachable("www.cs.toronto.edu", 443, timeout=0.05) is False
        assert not ended.is_set()  # it returned while the connection still hung
        assert entered.wait(timeout=10)  # (and the connection was tried)
    finally:
        released.set()


def test_failed_download_removes_what_it_created_and_keeps_the_rest(tmp_path, monkeypatch):
    root = tmp_path / "tfds"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "earlier.tar.gz").write_text("a finished download of another dataset")
    (root / "mnist" / "3.0.1").mkdir(parents=True)

    def partial_download(self, *args, **kwargs):  # what TFDS leaves when the network drops mid-way
        (root / "cifar10" / "3.0.2.incomplete7F3A").mkdir(parents=True)
        (root / "cifar10" / "3.0.2.incomplete7F3A" / "cifar10-train.tfrecord").write_text("half")
        (root / "downloads" / "cs.toronto.edu_cifar-10.tar.gz.tmp.0123").mkdir()
        (root / "downloads" / "extracted").mkdir()
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(images, "_reachable", lambda host, port, timeout: True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", partial_download)
    with pytest.raises(images.DatasetUnavailableError, match="ConnectionError: connection reset by peer"):
        images.load("cifar10", data_dir=str(root))
    assert sorted(os.listdir(root)) == ["downloads", "mnist"]
    assert os.listdir(root / "downloads") == ["earlier.tar.gz"]
    assert os.path.isdir(root / "mnist" / "3.0.1")


def test_missing_tfds_module_is_named_not_blamed_on_the_network(tmp_path, monkeypatch):
    def needs_module(builder):
        raise ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources")

    monkeypatch.setattr(images, "_download_hosts", needs_module)
    with pytest.raises(images.DatasetUnavailableError, match=r"needs the Python package 'importlib_resources'.*"
                                                               r"pip install importlib_resources"):
        images.load("cifar10", data_dir=str(tmp_path))


def test_download_hosts_come_from_the_builders_urls():
    builder = tfds.builder("cifar10", data_dir="/nonexistent-tfds-dir")
    assert images._download_hosts(builder) == [("www.cs.toronto.edu", 443)]


def test_setup_declares_what_tfds_download_needs():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    required = parser["options"]["install_requires"].split()
    assert "importlib_resources" in required and "tensorflow-datasets" in required


# --------------------------------------------------------------------------- Fashion-MNIST
def test_read_idx_raw_and_gzipped(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for gzipped in (False, True):
        path = write_idx(str(tmp_path / f"a{gzipped}"), array, gzipped)
        read = images.read_idx(path)
        assert read.dtype == np.uint8 and np.array_equal(read, array)
    labels = write_idx(str(tmp_path / "labels"), np.array([3, 1, 4], np.uint8))
    assert images.read_idx(labels).tolist() == [3, 1, 4]


def test_read_idx_rejects_broken_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(images.DatasetUnavailableError, match="not an IDX file.*apt-get install dataset-fashion-mnist"):
        images.read_idx(str(tmp_path / "bad"))
    path = write_idx(str(tmp_path / "cut"), np.zeros((4, 5), np.uint8))
    with open(path, "rb") as handle:
        raw = handle.read()
    with open(path, "wb") as handle:
        handle.write(raw[:-3])
    with pytest.raises(images.DatasetUnavailableError, match=r"truncated.*\(4, 5\).*holds 17"):
        images.read_idx(path)


@pytest.mark.parametrize("gzipped", [False, True])
def test_fashion_mnist_from_data_dir_with_the_papers_split(tmp_path, gzipped):
    (x, y), (x_test, y_test) = write_fashion_mnist(str(tmp_path), 300, 60, gzipped=gzipped)
    data = images.load("fashion_mnist", data_dir=str(tmp_path), val_size=30, train_size=100, seed=5)
    assert data.source == str(tmp_path) and data.num_classes == 10 and data.image_shape == (28, 28, 1)
    # validation: np.random.seed(5); np.random.permutation(300)[:30]; train: the first 100 others, in order
    val = np.random.RandomState(5).permutation(300)[:30]
    train = [i for i in range(300) if i not in set(val)][:100]
    assert np.array_equal(data.x_val[..., 0], x[val]) and np.array_equal(data.y_val, y[val])
    assert np.array_equal(data.x_train[..., 0], x[train]) and np.array_equal(data.y_train, y[train])
    assert np.array_equal(data.x_test[..., 0], x_test) and data.y_test.dtype == np.int32
    assert "fashion_mnist (from" in data.summary() and "(28, 28, 1)" in data.summary()


def test_fashion_mnist_search_order_debian_then_keras_cache(tmp_path, monkeypatch):
    debian, keras_home = tmp_path / "debian", tmp_path / "keras"
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", str(debian))
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    cache = keras_home / "datasets" / "fashion-mnist"
    write_fashion_mnist(str(cache), 40, 20, seed=1)
    assert images.load("fashion_mnist", val_fraction=0.0).source == str(cache)
    write_fashion_mnist(str(debian), 50, 20, seed=2)
    data = images.load("fashion_mnist", val_fraction=0.1)
    assert data.source == str(debian) and (len(data.y_train), len(data.y_val)) == (45, 5)


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", str(tmp_path / "none"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(images.DatasetUnavailableError) as error:
        images.load("fashion_mnist", download=False)
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
    assert str(tmp_path / "none") in message and str(tmp_path / "keras" / "datasets" / "fashion-mnist") in message
    with pytest.raises(images.DatasetUnavailableError, match=r"no IDX files .* in .*empty.*apt-get install"):
        images.load("fashion_mnist", data_dir=str(tmp_path / "empty"), download=False)


def test_fashion_mnist_from_prepared_tfds(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", str(tmp_path / "none"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with tfds.testing.mock_data(num_examples=20):
        data = images.load("fashion_mnist", val_fraction=0.1)
    assert data.source.startswith("TFDS") and data.image_shape == (28, 28, 1)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (18, 2, 20)


@pytest.mark.skipif(not os.path.isdir(images.DEBIAN_FASHION_MNIST), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_is_the_real_dataset():
    data = images.load("fashion_mnist")  # 10 % validation: 54k / 6k / 10k
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (54_000, 6_000, 10_000)
    assert data.x_train.shape[1:] == (28, 28, 1) and data.x_train.max() == 255
    labels = np.concatenate([data.y_train, data.y_val])
    assert np.bincount(labels).tolist() == [6000] * 10 and np.bincount(data.y_test).tolist() == [1000] * 10


# --------------------------------------------------------------------------- splits
def test_validation_split_is_the_papers_permutation():
    for seed in (0, 3):
        np.random.seed(seed)  # the papers: np.random.seed(args.seed) right before drawing val_indices
        papers = np.random.permutation(50_000)[:5000]
        train, val = images.split_train_val(50_000, 0.1, seed=seed)
        assert np.array_equal(val, papers)
        assert len(train) == 45_000 and np.all(np.diff(train) > 0) and not set(train) & set(val)
    train, val = images.split_train_val(100, seed=1, val_size=20, train_size=30)
    assert len(val) == 20 and np.array_equal(train, np.setdiff1d(np.arange(100), val)[:30])
    with pytest.raises(ValueError, match=r"train_size must be an int in \[1, 80\].*--train-size"):
        images.split_train_val(100, seed=1, val_size=20, train_size=81)
    with pytest.raises(ValueError, match="val_size must be an int in"):
        images.split_train_val(100, val_size=100)


def test_validation_labels_get_their_own_noise_by_default():
    data = images.load("synthetic", synthetic_size=(500, 20), val_fraction=0.2)
    noisy = data.with_label_noise(0.4, "symmetric", seed=2)
    assert noisy.val_noisy.sum() == int(0.4 * 100) and noisy.noisy.sum() == int(0.4 * 400)
    assert np.array_equal(noisy.y_val != noisy.y_val_clean, noisy.val_noisy)
    assert np.array_equal(noisy.y_val_clean, data.y_val)
    expected, _ = images.add_label_noise(data.y_val, 0.4, 10, "symmetric", seed=[2, 1])  # an independent draw
    assert np.array_equal(noisy.y_val, expected)
    clean = data.with_label_noise(0.4, "symmetric", seed=2, validation=False)
    assert np.array_equal(clean.y_val, data.y_val) and not clean.val_noisy.any()
    assert np.array_equal(clean.y_train, noisy.y_train)


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


def test_asymmetric_fashion_mnist_noise_follows_its_class_map():
    labels = np.repeat(np.arange(10), 100)
    noisy, flipped = images.add_label_noise(labels, 0.5, 10, "asymmetric", seed=0, dataset="fashion_mnist")
    names = images.FASHION_MNIST_CLASSES
    expected = {"T-shirt/top": "Shirt", "Pullover": "Coat", "Coat": "Pullover", "Sneaker": "Sandal",
                "Ankle boot": "Sneaker"}
    for source, target in zip(labels[flipped], noisy[flipped]):
        assert expected[names[source]] == names[target]
    assert set(names[c] for c in np.unique(labels[flipped])) == set(expected)


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


def test_fashion_mnist_augmentation_crops_2_pixels_without_flip():
    assert images.AUGMENTATION["fashion_mnist"] == {"padding": 2, "flip": False}
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 28, 28, 1), dtype=np.uint8)
    y = np.arange(40, dtype=np.int32)
    ds = images.train_dataset(x, y, batch_size=8, shuffle=False, repeat=False, **images.AUGMENTATION["fashion_mnist"])
    shifts = set()
    for batch_images, batch_labels in ds:
        for image, label in zip(batch_images.numpy(), batch_labels.numpy()):
            padded = np.pad(x[label] / 255.0, ((2, 2), (2, 2), (0, 0)))
            found = [(i, j) for i in range(5) for j in range(5) if np.allclose(image, padded[i : i + 28, j : j + 28])]
            assert found  # a 28x28 window of the 2-pixel zero-padded image, never mirrored
            shifts.add(found[0])
    assert len(shifts) > 5  # the crops move


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
