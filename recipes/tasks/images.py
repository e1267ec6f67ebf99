"""Image classification data: CIFAR-10 / CIFAR-100 (TFDS), Fashion-MNIST (IDX files) or synthetic images.

- `load(name, ...)`: uint8 images [n, H, W, C] and int32 labels as `ImageData`: the train split cut into
  train / validation, and the test split. The validation set is a seeded random subset of the train split,
  as in the papers' code (`np.random.seed(seed); val = np.random.permutation(n)[:n_val]`, n_val =
  floor(val_fraction n): 5k of CIFAR's 50k); the training set is the rest in the split's order, or its
  first `train_size` examples (the papers' `--frac_train` takes the first ones too).
- Fashion-MNIST (`"fashion_mnist"`, 60k / 10k greyscale 28x28, 10 classes) is read from its four IDX
  files (raw or gzipped): in `data_dir` when given; else Debian's `dataset-fashion-mnist` package
  (/usr/share/datasets/fashion-mnist), else Keras' cache (~/.keras/datasets/fashion-mnist, as
  `keras.datasets.fashion_mnist.load_data()` leaves it); else TFDS's `fashion_mnist` when prepared.
  Where none is there, the error names `apt-get install dataset-fashion-mnist`.
- CIFAR comes from TFDS; a missing dataset is downloaded when `download=True`, after a probe of the
  download host (a few seconds offline, instead of TFDS's minutes of retries); a failed download leaves
  nothing half-prepared behind. `"synthetic"`: random CIFAR-shaped data for smoke runs, without TFDS.
- `ImageData.with_label_noise(...)` / `add_label_noise(...)`: the papers' label noise, on the training
  labels and by default on the validation labels too (the papers' early stopping saw noisy validation
  labels), with a record of what was flipped.
- `train_dataset` / `eval_dataset`: tf.data pipelines, inputs in [0, 1]; training batches are augmented
  per dataset (`AUGMENTATION`: random crop of the zero-padded image, plus a horizontal flip for CIFAR),
  shuffled, repeated, and have a static batch size (`drop_remainder=True`, as XLA wants).
"""

import dataclasses
import gzip
import os
import shutil
import socket
import struct
import threading
import urllib.parse

import numpy as np
import tensorflow as tf

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "fashion_mnist": 10, "synthetic": 10}
DATASETS = tuple(NUM_CLASSES)
IMAGE_SHAPES = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "fashion_mnist": (28, 28, 1), "synthetic": (32, 32, 3)}
IMAGE_SHAPE = IMAGE_SHAPES["cifar10"]
NOISE_TYPES = ("symmetric", "asymmetric")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
# Asymmetric noise maps each drawn label to a similar class. CIFAR-10 (the papers' map): truck ->
# automobile, bird -> airplane, cat <-> dog, deer -> horse. Fashion-MNIST (ours, the same shape: five
# source classes, one swap): T-shirt/top -> Shirt, Pullover <-> Coat, Sneaker -> Sandal, Ankle boot ->
# Sneaker, the pairs a trained classifier confuses most (docs/recipes/fashion_mnist.md). Other datasets:
# y -> (y + 1) mod classes (the papers' CIFAR-100 map).
ASYMMETRIC_MAPS = {
    "cifar10": {9: 1, 2: 0, 3: 5, 5: 3, 4: 7},
    "fashion_mnist": {0: 6, 2: 4, 4: 2, 7: 5, 9: 7},
}
CIFAR10_ASYMMETRIC = ASYMMETRIC_MAPS["cifar10"]
# Training augmentation: random crop of the image zero-padded by `padding` pixels, and a random
# horizontal flip. CIFAR: the papers' RandomCrop(32, padding=4) + RandomHorizontalFlip. Fashion-MNIST:
# 2 pixels (7 % of 28, as 4 is 12.5 % of 32 but the garments fill the frame) and no flip: every shoe in
# Fashion-MNIST points left, so a flip makes images the test set never shows (the papers' code does not
# flip MNIST or SVHN either).
AUGMENTATION = {
    "cifar10": {"padding": 4, "flip": True},
    "cifar100": {"padding": 4, "flip": True},
    "fashion_mnist": {"padding": 2, "flip": False},
    "synthetic": {"padding": 4, "flip": True},
}

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
PROBE_TIMEOUT_S = 5.0  # how long the download host may take to accept a connection


class DatasetUnavailableError(RuntimeError):
    """The data of a dataset is not on disk and could not be downloaded (or its files are broken)."""


@dataclasses.dataclass
class ImageData:
    """Arrays of one dataset: uint8 images [n, H, W, C], int32 labels [n].

    `y_train` / `y_val` hold the labels as used (noisy when label noise was added), `y_train_clean` /
    `y_val_clean` the original ones, and `noisy` / `val_noisy` (bool) mark the flipped labels.
    `source` says where the arrays were read from.
    """

    name: str
    num_classes: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    y_train_clean: np.ndarray = None
    noisy: np.ndarray = None
    y_val_clean: np.ndarray = None
    val_noisy: np.ndarray = None
    source: str = ""

    def __post_init__(self):
        if self.y_train_clean is None:
            self.y_train_clean = self.y_train.copy()
        if self.noisy is None:
            self.noisy = np.zeros(len(self.y_train), dtype=bool)
        if self.y_val_clean is None:
            self.y_val_clean = self.y_val.copy()
        if self.val_noisy is None:
            self.val_noisy = np.zeros(len(self.y_val), dtype=bool)

    @property
    def image_shape(self):
        """The shape of one image (H, W, C): the models' `input_shape`."""
        return tuple(self.x_train.shape[1:])

    def with_label_noise(self, fraction, noise_type="symmetric", seed=0, validation=True):
        """A copy with `fraction` label noise (see `add_label_noise`) on the training labels and, when
        `validation` (the papers' choice), an independent draw on the validation labels (seed `[seed, 1]`)."""
        noisy_labels, flipped = add_label_noise(
            self.y_train_clean, fraction, self.num_classes, noise_type, seed=seed, dataset=self.name
        )
        data = dataclasses.replace(self, y_train=noisy_labels, noisy=flipped)
        if validation and len(self.y_val_clean):
            val_labels, val_flipped = add_label_noise(
                self.y_val_clean, fraction, self.num_classes, noise_type, seed=[seed, 1], dataset=self.name
            )
            data = dataclasses.replace(data, y_val=val_labels, val_noisy=val_flipped)
        return data

    def summary(self):
        noise = f", {int(self.noisy.sum())} noisy training labels" if self.noisy.any() else ""
        if self.val_noisy.any():
            noise += f", {int(self.val_noisy.sum())} noisy validation labels"
        source = f" (from {self.source})" if self.source else ""
        return (
            f"{self.name}{source}: {len(self.y_train)} train / {len(self.y_val)} validation / {len(self.y_test)} "
            f"test examples of shape {self.image_shape}, {self.num_classes} classes{noise}"
        )


# --------------------------------------------------------------------------- loading: TFDS
def _check_name(name):
    if name not in NUM_CLASSES:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {list(DATASETS)}.")


class _NotPrepared(Exception):
    """Internal: why a TFDS dataset could not be had (the caller words the fix)."""


def _reachable(host, port, timeout):
    """True when a TCP connection to host:port (name lookup included) succeeds within `timeout` seconds."""
    result = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)  # the name lookup ignores `timeout`: bound it here
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _download_hosts(builder):
    """(host, port) of every URL the builder downloads from (its registered checksums)."""
    hosts = set()
    for url in builder.url_infos or {}:
        parsed = urllib.parse.urlparse(url)
        if parsed.hostname:
            hosts.add((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)))
    return sorted(hosts)


def _snapshot(root, name):
    """The paths under `root` that a download of `name` may create (the top levels only)."""
    paths = set()
    for directory in (root, os.path.join(root, name), os.path.join(root, "downloads"),
                      os.path.join(root, "downloads", name)):
        if os.path.isdir(directory):
            paths.update(os.path.join(directory, entry) for entry in os.listdir(directory))
    return paths


def _remove_new(root, name, before):
    """Removes what a failed download created under `root` (nothing that was there before)."""
    for path in sorted(_snapshot(root, name) - before, key=len):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)


def _download_and_prepare(builder, name):
    """Downloads and prepares a TFDS dataset; raises `_NotPrepared` with the reason, quickly when offline."""
    try:
        hosts = _download_hosts(builder)
    except ModuleNotFoundError as error:  # TFDS's download path imports more than TFDS declares
        raise _NotPrepared(
            f"TFDS's download path needs the Python package {error.name!r}, which is not installed: "
            f"`pip install {error.name}` (keras-msam declares it: `pip install -e .` installs it)"
        ) from error
    mocked = type(builder).download_and_prepare.__module__.startswith("tensorflow_datasets.testing")
    for host, port in [] if mocked else hosts:  # tfds.testing.mock_data downloads nothing: no probe
        if not _reachable(host, port, PROBE_TIMEOUT_S):
            raise _NotPrepared(f"its download host {host}:{port} did not answer within {PROBE_TIMEOUT_S:g} s "
                               "(no internet access?)")
    root = os.fspath(builder.data_dir_root)
    before = _snapshot(root, name)
    try:
        builder.download_and_prepare()
    except BaseException as error:  # network errors come in many types; clean up after any of them
        _remove_new(root, name, before)
        if not isinstance(error, Exception):
            raise
        raise _NotPrepared(f"the download failed ({type(error).__name__}: {error})") from error


def _tfds_builder(name, data_dir, download):
    """A prepared TFDS builder of `name`; raises `_NotPrepared` with the reason."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            raise _NotPrepared("it is not prepared and download=False (--no-download)")
        _download_and_prepare(builder, name)
    return builder


def _tfds_split(builder, split):
    import tensorflow_datasets as tfds

    batches = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(10_000)))
    images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
    labels = np.concatenate([b[1] for b in batches]).astype(np.int32)
    return images, labels


def _tfds_arrays(name, data_dir, download):
    """((x, y), (x_test, y_test)) of a TFDS dataset, downloaded if needed and allowed."""
    where = f"--data-dir {data_dir}" if data_dir else "the default TFDS data dir (~/tensorflow_datasets)"
    try:
        builder = _tfds_builder(name, data_dir, download)
    except _NotPrepared as reason:
        raise DatasetUnavailableError(
            f"TFDS dataset {name!r} is not prepared in {where} and could not be had: {reason}. Fix: prepare it on "
            f"a machine with internet access with `python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder('{name}', data_dir=DIR).download_and_prepare()\"` and copy DIR here (pass it with "
            f"--data-dir / data_dir=), or use dataset 'synthetic' for a smoke run."
        ) from reason
    return _tfds_split(builder, "train"), _tfds_split(builder, "test")


# --------------------------------------------------------------------------- loading: IDX files
def read_idx(path):
    """An IDX file (the MNIST format; raw or gzipped, told by its first bytes) as a uint8 array."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    with (gzip.open if gzipped else open)(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] < 1:
        raise DatasetUnavailableError(
            f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex() or 'missing'}, expected 0000 08 "
            f"<ndim>): replace it with the dataset's original file ({FASHION_MNIST_INSTALL})."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else None
    if dims is None or len(raw) - header != int(np.prod(dims)):
        raise DatasetUnavailableError(
            f"{path} is truncated or corrupt: its header announces {dims} bytes of data, the file holds "
            f"{len(raw) - header}: replace it with the dataset's original file ({FASHION_MNIST_INSTALL})."
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _idx_path(directory, stem):
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _idx_split(directory, split, num_classes):
    """(images [n, H, W, 1], labels [n]) of one split from its IDX files in `directory`."""
    image_path, label_path = (_idx_path(directory, stem) for stem in IDX_FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetUnavailableError(
            f"{image_path} and {label_path} do not fit together: images {images.shape}, labels {labels.shape} "
            f"(expected [n, H, W] and [n]): replace them with the dataset's original files ({FASHION_MNIST_INSTALL})."
        )
    if len(labels) and labels.max() >= num_classes:
        raise DatasetUnavailableError(f"{label_path} holds label {labels.max()} >= {num_classes} classes.")
    return images[..., None], labels.astype(np.int32)


def keras_cache_dir():
    """Where `keras.datasets.fashion_mnist.load_data()` keeps the files ($KERAS_HOME or ~/.keras)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "datasets", "fashion-mnist")


def idx_directories(data_dir=None):
    """The directories searched for the Fashion-MNIST IDX files, in order."""
    return [data_dir] if data_dir else [DEBIAN_FASHION_MNIST, keras_cache_dir()]


def _has_idx_files(directory):
    return all(_idx_path(directory, stem) for split in IDX_FILES.values() for stem in split)


def _fashion_mnist_arrays(data_dir, download):
    """((x, y), (x_test, y_test)), source: IDX files (see the module doc), else TFDS's fashion_mnist."""
    name = "fashion_mnist"
    searched = idx_directories(data_dir)
    for directory in searched:
        if _has_idx_files(directory):
            return (_idx_split(directory, "train", 10), _idx_split(directory, "test", 10)), directory
    try:
        builder = _tfds_builder(name, data_dir, download)
    except _NotPrepared as reason:
        files = ", ".join(f"{stem}[.gz]" for split in IDX_FILES.values() for stem in split)
        tfds_where = data_dir or "the default TFDS data dir"
        raise DatasetUnavailableError(
            f"Fashion-MNIST was not found: no IDX files ({files}) in {' or '.join(searched)}, and TFDS's "
            f"{name!r} in {tfds_where}: {reason}. Fix: `{FASHION_MNIST_INSTALL}` (Debian / Ubuntu: puts the "
            f"files in {DEBIAN_FASHION_MNIST}), or put the four files in a directory and pass --data-dir DIR."
        ) from reason
    return (_tfds_split(builder, "train"), _tfds_split(builder, "test")), f"TFDS {builder.data_dir}"


def synthetic_arrays(num_train=1024, num_test=256, num_classes=10, seed=0):
    """Random CIFAR-shaped data: image = clip(template[label] + noise); a net can learn the classes."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(num_classes,) + IMAGE_SHAPE)

    def draw(n):
        labels = rng.integers(0, num_classes, size=n).astype(np.int32)
        images = 0.5 * templates[labels] + rng.uniform(0, 127.5, size=(n,) + IMAGE_SHAPE)
        return np.clip(images, 0, 255).astype(np.uint8), labels

    return draw(num_train), draw(num_test)


# --------------------------------------------------------------------------- splits
def validation_indices(n, num_val, seed):
    """The papers' validation set: `np.random.seed(seed); np.random.permutation(n)[:num_val]`."""
    return np.random.RandomState(seed).permutation(n)[:num_val]


def split_train_val(n, val_fraction=0.1, seed=0, val_size=None, train_size=None):
    """(train indices, validation indices) of a train split of n examples.

    The validation set is `validation_indices(n, num_val, seed)` with num_val = `val_size`, or
    floor(val_fraction n) (the papers' `int(0.1 * 50000)`); the training set is the other examples in
    their order, or the first `train_size` of them.
    """
    if val_size is None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got val_fraction={val_fraction!r}.")
        num_val = int(val_fraction * n)
    else:
        if not isinstance(val_size, (int, np.integer)) or not 0 <= val_size < n:
            raise ValueError(f"val_size must be an int in [0, {n}) (the train split has {n} examples); "
                             f"got val_size={val_size!r}.")
        num_val = int(val_size)
    val = validation_indices(n, num_val, seed)
    keep = np.ones(n, dtype=bool)
    keep[val] = False
    train = np.flatnonzero(keep)
    if train_size is not None:
        if not isinstance(train_size, (int, np.integer)) or not 1 <= train_size <= len(train):
            raise ValueError(
                f"train_size must be an int in [1, {len(train)}] (the examples left after the {num_val} validation "
                f"examples); got train_size={train_size!r}. Lower --train-size or --val-size / --val-fraction."
            )
        train = train[: int(train_size)]
    return train, val


def load(name, data_dir=None, val_fraction=0.1, download=True, synthetic_size=(1024, 256), seed=0, val_size=None,
         train_size=None):
    """Loads a dataset as `ImageData`: train / validation / test (see `split_train_val`).

    Args:
        name: "cifar10", "cifar100", "fashion_mnist" or "synthetic".
        data_dir: CIFAR: the TFDS data directory (None: TFDS's default). Fashion-MNIST: the directory of
            its IDX files (or a TFDS data directory); None: the default places (module doc).
        val_fraction: fraction of the train split held out for validation (0.1: 45k / 5k for CIFAR).
        download: download and prepare missing TFDS data (CIFAR, or Fashion-MNIST when no IDX files exist).
        synthetic_size: (train + validation, test) examples of the synthetic dataset.
        seed: seed of the validation split (the papers': the run's seed) and of the synthetic data.
        val_size: number of validation examples (overrides val_fraction).
        train_size: keep only the first `train_size` training examples (None: all).
    """
    _check_name(name)
    source = ""
    if name == "synthetic":
        (x, y), (x_test, y_test) = synthetic_arrays(*synthetic_size, num_classes=NUM_CLASSES[name], seed=seed)
        source = "random templates"
    elif name == "fashion_mnist":
        ((x, y), (x_test, y_test)), source = _fashion_mnist_arrays(data_dir, download)
    else:
        (x, y), (x_test, y_test) = _tfds_arrays(name, data_dir, download)
        source = "TFDS"
    train, val = split_train_val(len(y), val_fraction, seed, val_size, train_size)
    return ImageData(name, NUM_CLASSES[name], x[train], y[train], x[val], y[val], x_test, y_test, source=source)


# --------------------------------------------------------------------------- label noise
def asymmetric_map(dataset, num_classes):
    """The asymmetric-noise class map of `dataset` as an array: label y becomes map[y] when drawn."""
    mapping = np.arange(num_classes)
    if dataset in ASYMMETRIC_MAPS:
        for source, target in ASYMMETRIC_MAPS[dataset].items():
            mapping[source] = target
        return mapping
    return (mapping + 1) % num_classes


def add_label_noise(labels, fraction, num_classes, noise_type="symmetric", seed=0, dataset="cifar10"):
    """Flips labels as in the papers' code; returns (noisy labels, bool mask of changed labels).

    Exactly floor(fraction * n) examples are drawn without replacement (`np.random.default_rng(seed)`).
    Symmetric noise gives each a label drawn uniformly from the OTHER classes, so exactly that many labels
    change. Asymmetric noise maps the drawn labels with `asymmetric_map(dataset)`: CIFAR-10 9->1, 2->0,
    3->5, 5->3, 4->7; Fashion-MNIST 0->6, 2->4, 4->2, 7->5, 9->7 (drawn examples of the other classes keep
    their label, so fewer labels change); CIFAR-100 (and synthetic) y -> (y + 1) mod num_classes. The
    mask marks the labels that actually changed.
    """
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise_type must be one of {NOISE_TYPES}; got noise_type={noise_type!r}.")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label noise fraction must be in [0, 1]; got {fraction!r}.")
    labels = np.asarray(labels, dtype=np.int32)
    noisy = labels.copy()
    rng = np.random.default_rng(seed)
    count = int(fraction * len(labels))
    chosen = rng.permutation(len(labels))[:count]
    if noise_type == "symmetric":
        # a uniform draw from the num_classes - 1 other classes: shift by 1..num_classes-1
        shift = rng.integers(1, num_classes, size=count)
        noisy[chosen] = (labels[chosen] + shift) % num_classes
    else:
        noisy[chosen] = asymmetric_map(dataset, num_classes)[labels[chosen]]
    return noisy, noisy != labels


# --------------------------------------------------------------------------- tf.data
def to_unit_range(images):
    """uint8 -> float32 in [0, 1] (no mean / std normalisation, as in the papers)."""
    return tf.cast(images, tf.float32) / 255.0


def augment(image, seed, padding=4, flip=True):
    """Random crop of the image zero-padded by `padding` pixels back to its size, then (if `flip`) a random
    horizontal flip; stateless, drawn from `seed` (a shape [2] integer tensor), so that the same seed gives
    the same image whatever the threads do. `AUGMENTATION[dataset]` holds each dataset's setting."""
    shape = tf.shape(image)
    if padding:
        padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
        image = tf.image.stateless_random_crop(padded, shape, seed=seed)
    return tf.image.stateless_random_flip_left_right(image, seed=seed[::-1]) if flip else image


def train_dataset(x, y, batch_size, augmentation=True, shuffle=True, seed=0, repeat=True, padding=4, flip=True):
    """Shuffled, augmented (`augment(padding, flip)`) training batches with a static batch size
    (incomplete batches dropped). Each example's augmentation seed is drawn in order from
    `tf.data.Dataset.random(seed)`, so the batches depend on `seed` only (not on thread timing)."""
    if len(x) < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {len(x)} training examples; use a smaller --batch-size."
        )
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def prepare(example, draw):
        image, label = example
        image = to_unit_range(image)
        return (augment(image, tf.stack([draw, seed]), padding, flip) if augmentation else image), label

    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=seed)).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(x, y, batch_size):
    """Unaugmented batches in order (the last one may be smaller, so every example counts)."""
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    return ds.map(lambda image, label: (to_unit_range(image), label), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )
