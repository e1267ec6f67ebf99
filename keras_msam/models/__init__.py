"""Model builders: the PreAct ResNets of the m-SAM papers (`get_model(name)`, `preact_resnet(depth)`)."""

from keras_msam.models.preact_resnet import REGISTRY, get_model, preact_resnet

__all__ = ["REGISTRY", "get_model", "preact_resnet"]
