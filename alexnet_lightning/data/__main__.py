"""The data pipeline's commands: ``python -m alexnet_lightning.data {builtin,statistics,prepare} --help``."""

import argparse
import logging
import os
from pathlib import Path

from alexnet_lightning.data import shards, standin
from alexnet_lightning.data.datamodule import ImageNetDataModule
from alexnet_lightning.signals import Sigterm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alexnet_lightning.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("builtin", help="generate the built-in stand-in and print its folder",
                                   description=standin.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--train-per-class", type=int, default=standin.TRAIN_PER_CLASS)
    generate.add_argument("--val-per-class", type=int, default=standin.VAL_PER_CLASS)

    stats = commands.add_parser("statistics", help="compute and cache a data root's mean image and RGB PCA",
                                description=ImageNetDataModule.statistics.__doc__)
    stats.add_argument("root", help="data root: ImageFolder train/ and val/, the ILSVRC-2012 archives, or prepared")
    stats.add_argument("--resize-size", type=int, default=256)
    stats.add_argument("--max-images", type=int, default=10_000, help="training images sampled")
    stats.add_argument("--num-workers", type=int, default=None)

    prepare = commands.add_parser("prepare", help="write a data root as 256x256 JPEG or raw shards (the fast path)",
                                  description=shards.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    prepare.add_argument("source", help="data root (ImageFolder train/, val/; or the ILSVRC-2012 archives) or builtin")
    prepare.add_argument("dest", type=Path, help="folder for the shards")
    prepare.add_argument("--encoding", choices=shards.ENCODINGS, default="jpeg",
                         help="jpeg: about 1/10 of raw for photos, decoded while training; raw: uint8 arrays")
    prepare.add_argument("--quality", type=int, default=90, help="JPEG quality (FFCV's ImageNet: 90)")
    prepare.add_argument("--size", type=int, default=256, help="side of the stored central square (the paper: 256)")
    prepare.add_argument("--shard-size", type=int, default=2048, help="images per shard file")
    prepare.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")

    args = parser.parse_args(argv)
    if args.command == "builtin":
        print(standin.ensure(args.seed, args.train_per_class, args.val_per_class))
    elif args.command == "statistics":
        logging.basicConfig(level=logging.INFO)
        datamodule = ImageNetDataModule(batch_size=64, root=args.root, resize_size=args.resize_size,
                                        num_workers=args.num_workers, statistics_images=args.max_images)
        result = datamodule.statistics()
        print(f"eigval {result.eigval.tolist()}\neigvec {result.eigvec.tolist()}")
        print(f"channel mean {result.mean_image.mean((1, 2)).tolist()}")
    else:
        source = None if args.source == "builtin" else args.source
        with Sigterm.recorded():  # a SIGTERM stops after the shard being written
            dest = shards.prepare(source, args.dest, args.size, args.shard_size, args.workers, args.encoding,
                                  args.quality)
        for split, info in shards.read_meta(dest)["splits"].items():
            print(f"{split}: {info['images']} images in {info['shards']} shards, "
                  f"{len(info['skipped'])} unreadable skipped")
        print(f"Train from it with --data.root {dest}")


if __name__ == "__main__":
    main()
