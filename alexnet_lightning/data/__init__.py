"""The input pipeline, one module per step, each importing only the steps before it:

``sources`` (folders, the ILSVRC-2012 archives, files decoded to RGB) → ``builtin`` (the stand-in, generated on
first use) → ``statistics`` (mean image, RGB PCA) → ``transforms`` (the paper's augmentation, image by image and on
whole batches) → ``prepared`` (256x256 shards, the fast path) → ``datamodule`` (the LightningDataModule).
Commands: ``python -m alexnet_lightning.data --help``.
"""
