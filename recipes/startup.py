"""TensorFlow imported once, quietly, before any recipe touches it.

`import recipes` runs `quiet_tensorflow_import()` (from `recipes/__init__.py`), so every way into the
recipes (`msam`, `python -m recipes`, `python -m recipes.<name>`) starts without TensorFlow's start-up
noise: `TF_CPP_MIN_LOG_LEVEL=3` is set (unless already set) before TensorFlow loads, and the C-level
lines that setting does not silence (`WARNING: All log messages before absl::InitializeLog() ...`,
`I0000 ... cudart_stub`, `E0000 ... failed call to cuInit`) are dropped by pointing file descriptor 2 at
/dev/null while TensorFlow is imported and lists its devices. Once TensorFlow is loaded (a test session,
a notebook) this does nothing.
"""

import contextlib
import os
import sys


@contextlib.contextmanager
def _stderr_to_devnull():
    """Points fd 2 at /dev/null inside the block (C++ writes included) and restores it afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow_import():
    """Imports TensorFlow (once) with its start-up lines hidden; an ImportError still surfaces."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" in sys.modules:
        return
    with _stderr_to_devnull():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe (cuInit) logs here, not at import
