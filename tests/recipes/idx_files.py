"""Small Fashion-MNIST-shaped datasets written as IDX files (the tests do not need Debian's package)."""

import gzip
import os
import struct

import numpy as np

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_idx(path, array, gzipped=False):
    """Writes a uint8 array in the IDX format (magic 0x0000 08 ndim, big-endian dims, the bytes)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    with (gzip.open if gzipped else open)(path, "wb") as handle:
        handle.write(raw)
    return path


def class_images(n, seed, num_classes=10, size=28):
    """n greyscale images of a learnable task: a class template (a bright bar at a class-specific
    place, asymmetric left/right) plus noise; labels cycle through the classes, shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.uint8)
    templates = np.zeros((num_classes, size, size))
    for c in range(num_classes):
        templates[c, 2 * c + 2 : 2 * c + 6, 3 : 12 + c] = 200.0
    images = templates[labels] + rng.uniform(0, 55, size=(n, size, size))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_fashion_mnist(directory, n_train=300, n_test=100, gzipped=True, seed=0):
    """The four Fashion-MNIST IDX files of a small dataset in `directory`; returns the arrays
    ((x_train, y_train), (x_test, y_test)) as written ([n, 28, 28] images)."""
    os.makedirs(directory, exist_ok=True)
    arrays = {"train": class_images(n_train, seed), "test": class_images(n_test, seed + 1)}
    for split, (images_name, labels_name) in FILES.items():
        suffix = ".gz" if gzipped else ""
        write_idx(os.path.join(directory, images_name + suffix), arrays[split][0], gzipped)
        write_idx(os.path.join(directory, labels_name + suffix), arrays[split][1], gzipped)
    return arrays["train"], arrays["test"]
