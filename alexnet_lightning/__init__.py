"""A paper-faithful AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) in PyTorch Lightning."""

from alexnet_lightning.network import AlexNet, LocalResponseNorm, local_response_norm

__all__ = ["AlexNet", "LocalResponseNorm", "local_response_norm"]
