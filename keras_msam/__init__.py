"""keras-msam: sharpness-aware minimization with m-sharpness for Keras 3."""

from keras_msam.sam_model import SAMModel

__all__ = ["SAMModel"]
__version__ = "0.1.0"
