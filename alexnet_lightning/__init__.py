"""A paper-faithful AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) in PyTorch Lightning."""

from pathlib import Path

from alexnet_lightning.network import AlexNet, LocalResponseNorm, local_response_norm

# The packaged configs: paper.yaml (the paper's run), gpu.yaml, presets/, ablations/, strategy/ and the W&B sweep.
CONFIGS = Path(__file__).resolve().parent / "configs"

__all__ = ["CONFIGS", "AlexNet", "LocalResponseNorm", "local_response_norm"]
