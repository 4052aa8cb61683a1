"""torch.hub entry points: ``torch.hub.load(CLONE, "alexnet", source="local", checkpoint=PATH)`` (or ``export=PATH``).

Returns the paper's two-tower AlexNet with the trained weights, in eval mode. Files are read without running code from
them: a checkpoint with ``torch.load(weights_only=True)`` (a pickle that needs more is refused, never loaded), an export
as safetensors. For the preprocessing and class names too: ``alexnet_lightning.use.classify.load(PATH)``.
torchvision's ``alexnet`` is the later one-tower network of "One weird trick": these weights do not fit it.
"""

dependencies = ["torch", "torchvision", "safetensors"]


def alexnet(checkpoint: str | None = None, export: str | None = None):
    """The trained network of a checkpoint (``.ckpt``) or an export (``alexnet-export``), in eval mode."""
    from alexnet_lightning.use.classify import build_network
    from alexnet_lightning.use.record import read

    if (checkpoint is None) == (export is None):
        raise ValueError("alexnet: pass exactly one of checkpoint=PATH or export=PATH")
    return build_network(*read(checkpoint if checkpoint is not None else export))
