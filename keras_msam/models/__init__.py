"""Model builders used by the recipes."""

from keras_msam.models.preact_resnet import REGISTRY, get_model, preact_resnet

__all__ = ["REGISTRY", "get_model", "preact_resnet"]
