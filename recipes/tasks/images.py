"""Image classification data: CIFAR-10 / CIFAR-100 (through TFDS) or synthetic images, as arrays and tf.data.

- `load(name)`: uint8 images and int labels, the TFDS train split cut into train / validation
  (45k / 5k for CIFAR: the last `val_fraction` of the split is the validation set) and the test split.
  `name="synthetic"` gives random CIFAR-shaped data (learnable: each class is a noisy template) for
  smoke runs and benchmarks, without TFDS.
- `add_label_noise(labels, fraction, ...)`: the papers' label noise, with a record of what was flipped.
- `train_dataset` / `eval_dataset`: tf.data pipelines, inputs in [0, 1]; training batches are
  augmented (random 32x32 crop of the 4-pixel zero-padded image + horizontal flip, in a parallel map),
  shuffled, repeated, and have a static batch size (`drop_remainder=True`, as XLA wants).
"""

import dataclasses

import numpy as np
import tensorflow as tf

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "synthetic": 10}
DATASETS = tuple(NUM_CLASSES)
NOISE_TYPES = ("symmetric", "asymmetric")
# CIFAR-10 asymmetric noise: truck -> automobile, bird -> airplane, cat <-> dog, deer -> horse.
CIFAR10_ASYMMETRIC = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}
IMAGE_SHAPE = (32, 32, 3)


class DatasetUnavailableError(RuntimeError):
    """The TFDS data of a dataset is not on disk and could not be downloaded."""


@dataclasses.dataclass
class CifarData:
    """Arrays of one dataset: uint8 images [n, 32, 32, 3], int32 labels [n].

    `y_train` holds the training labels as used for training (noisy when label noise was added),
    `y_train_clean` the original ones and `noisy` (bool [n_train]) marks the flipped labels.
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

    def __post_init__(self):
        if self.y_train_clean is None:
            self.y_train_clean = self.y_train.copy()
        if self.noisy is None:
            self.noisy = np.zeros(len(self.y_train), dtype=bool)

    def with_label_noise(self, fraction, noise_type="symmetric", seed=0):
        """A copy whose training labels carry `fraction` label noise (see `add_label_noise`)."""
        noisy_labels, flipped = add_label_noise(
            self.y_train_clean, fraction, self.num_classes, noise_type, seed=seed, dataset=self.name
        )
        return dataclasses.replace(self, y_train=noisy_labels, noisy=flipped)

    def summary(self):
        noise = f", {int(self.noisy.sum())} noisy training labels" if self.noisy.any() else ""
        return (
            f"{self.name}: {len(self.y_train)} train / {len(self.y_val)} validation / {len(self.y_test)} test "
            f"examples, {self.num_classes} classes{noise}"
        )


# --------------------------------------------------------------------------- loading
def _check_name(name):
    if name not in NUM_CLASSES:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {list(DATASETS)}.")


def _tfds_arrays(name, split, data_dir, download):
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        where = f"--data-dir {data_dir}" if data_dir else "the default TFDS data dir (~/tensorflow_datasets)"
        fix = (
            f"prepare it on a machine with internet access with "
            f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir=DIR).download_and_prepare()\"` "
            f"and copy DIR here (pass it with --data-dir / data_dir=), or use dataset 'synthetic' for a smoke run"
        )
        if not download:
            raise DatasetUnavailableError(f"TFDS dataset {name!r} is not prepared in {where} and download=False: {fix}.")
        try:
            builder.download_and_prepare()
        except Exception as error:  # network errors come in many types
            raise DatasetUnavailableError(
                f"TFDS dataset {name!r} is not prepared in {where} and could not be downloaded "
                f"({type(error).__name__}: {error}): {fix}."
            ) from error
    batches = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(10_000)))
    images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
    labels = np.concatenate([b[1] for b in batches]).astype(np.int32)
    return images, labels


def synthetic_arrays(num_train=1024, num_test=256, num_classes=10, seed=0):
    """Random CIFAR-shaped data: image = clip(template[label] + noise); a net can learn the classes."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(num_classes,) + IMAGE_SHAPE)

    def draw(n):
        labels = rng.integers(0, num_classes, size=n).astype(np.int32)
        images = 0.5 * templates[labels] + rng.uniform(0, 127.5, size=(n,) + IMAGE_SHAPE)
        return np.clip(images, 0, 255).astype(np.uint8), labels

    return draw(num_train), draw(num_test)


def load(name, data_dir=None, val_fraction=0.1, download=True, synthetic_size=(1024, 256), seed=0):
    """Loads a dataset as `CifarData` (the last `val_fraction` of the train split is the validation set).

    Args:
        name: "cifar10", "cifar100" or "synthetic".
        data_dir: TFDS data directory (None: TFDS's default).
        val_fraction: fraction of the train split held out (0.1: 45k / 5k for CIFAR; 0: none).
        download: try to download and prepare the TFDS data when it is missing.
        synthetic_size: (train + validation, test) examples of the synthetic dataset.
        seed: seed of the synthetic data.
    """
    _check_name(name)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got val_fraction={val_fraction!r}.")
    if name == "synthetic":
        (x, y), (x_test, y_test) = synthetic_arrays(*synthetic_size, num_classes=NUM_CLASSES[name], seed=seed)
    else:
        x, y = _tfds_arrays(name, "train", data_dir, download)
        x_test, y_test = _tfds_arrays(name, "test", data_dir, download)
    num_val = int(round(val_fraction * len(y)))
    cut = len(y) - num_val
    return CifarData(name, NUM_CLASSES[name], x[:cut], y[:cut], x[cut:], y[cut:], x_test, y_test)


# --------------------------------------------------------------------------- label noise
def add_label_noise(labels, fraction, num_classes, noise_type="symmetric", seed=0, dataset="cifar10"):
    """Flips labels as in the papers' code; returns (noisy labels, bool mask of changed labels).

    Exactly floor(fraction * n) examples are drawn without replacement (seeded). Symmetric noise gives
    each a label drawn uniformly from the OTHER classes, so exactly that many labels change.
    Asymmetric noise maps the drawn labels: CIFAR-10 9->1, 2->0, 3->5, 5->3, 4->7 (drawn examples of
    the other classes keep their label, so fewer labels change); CIFAR-100 (and synthetic)
    y -> (y + 1) mod num_classes. The mask marks the labels that actually changed.
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
    elif dataset == "cifar10":
        mapping = np.arange(num_classes)
        for source, target in CIFAR10_ASYMMETRIC.items():
            mapping[source] = target
        noisy[chosen] = mapping[labels[chosen]]
    else:
        noisy[chosen] = (labels[chosen] + 1) % num_classes
    return noisy, noisy != labels


# --------------------------------------------------------------------------- tf.data
def to_unit_range(images):
    """uint8 -> float32 in [0, 1] (no mean / std normalisation, as in the papers)."""
    return tf.cast(images, tf.float32) / 255.0


def augment(image, padding=4):
    """Random crop of the zero-padded image back to its size, then a random horizontal flip."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    cropped = tf.image.random_crop(padded, shape)
    return tf.image.random_flip_left_right(cropped)


def train_dataset(x, y, batch_size, augmentation=True, shuffle=True, seed=0, repeat=True):
    """Shuffled, augmented training batches with a static batch size (incomplete batches dropped)."""
    if len(x) < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {len(x)} training examples; use a smaller --batch-size."
        )
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def prepare(image, label):
        image = to_unit_range(image)
        return (augment(image) if augmentation else image), label

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(x, y, batch_size):
    """Unaugmented batches in order (the last one may be smaller, so every example counts)."""
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    return ds.map(lambda image, label: (to_unit_range(image), label), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )
