"""Classify images with a trained network, from its checkpoint or export alone (no data folder).

``alexnet-classify CHECKPOINT PATH... [--json | --csv] [--ten-crop]`` prints each image's top-5 classes with their
probabilities: from the centre crop, or with ``--ten-crop`` from the softmax averaged over the paper's ten crops
(Section 4.1). Folders are searched for image files; an unreadable file is named on stderr and skipped.

In Python: ``model, preprocess, classes = load(path)``; ``model(preprocess(image)[None]).softmax(-1)``.
"""

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from alexnet_lightning.data.sources import IMAGE_EXTENSIONS, UNREADABLE, load_rgb
from alexnet_lightning.data.transforms import EvalTransforms
from alexnet_lightning.model.network import AlexNet
from alexnet_lightning.use.record import UnsafeFile, read

TOP = 5


def build_network(record: dict[str, Any], weights: dict[str, Tensor]) -> AlexNet:
    """The recorded network with the weights, in eval mode (dropout off)."""
    network = AlexNet(**record["network"])
    network.load_state_dict(weights)
    return network.eval()


def preprocessing(record: dict[str, Any], ten_crops: bool = False) -> Callable[[Image.Image], Tensor]:
    """The evaluation pipeline the network was tested with: PIL RGB image -> [3, S, S] (or [10, 3, S, S])."""
    data = record["data"]
    return EvalTransforms(data["mean"], data["resize_size"], data["crop_size"], ten_crops=ten_crops,
                          value_scale=data["value_scale"])


def load(checkpoint_or_export: str | Path, ten_crops: bool = False) -> tuple[AlexNet, Callable, list[str]]:
    """``(model, preprocess, classes)`` from a checkpoint or an export, read without running code from it: the
    network in eval mode, the evaluation pipeline (PIL RGB image -> tensor), and the class names in label order."""
    record, weights = read(Path(checkpoint_or_export))
    return build_network(record, weights), preprocessing(record, ten_crops), list(record["data"]["names"])


def image_files(paths: list[Path]) -> Iterator[Path]:
    """The files named, and the image files (by extension) under the folders named, sorted."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            yield path


@torch.no_grad()
def probabilities(model: AlexNet, images: Tensor) -> Tensor:
    """Softmax of [B, 3, S, S] images, or of [B, 10, 3, S, S] ten crops averaged over the crops (Section 4.1)."""
    if images.dim() == 5:
        batch, crops = images.shape[:2]
        return model(images.flatten(0, 1)).softmax(-1).view(batch, crops, -1).mean(1)
    return model(images).softmax(-1)


def classify(model: AlexNet, preprocess: Callable, files: list[Path], batch_size: int = 32,
             skipped: Callable[[Path, str], None] | None = None) -> Iterator[tuple[Path, Tensor]]:
    """(file, class probabilities) for each readable file; ``skipped(file, reason)`` for each that is not."""
    batch: list[tuple[Path, Tensor]] = []
    for i, file in enumerate(files):
        try:
            batch.append((file, preprocess(load_rgb(file))))
        except (*UNREADABLE, RuntimeError) as err:
            if skipped is not None:
                skipped(file, f"{type(err).__name__}: {err}")
        if batch and (len(batch) == batch_size or i == len(files) - 1):
            probs = probabilities(model, torch.stack([x for _, x in batch]))
            yield from zip([f for f, _ in batch], probs)
            batch = []


def top(probs: Tensor, wnids: list[str], names: list[str], k: int = TOP) -> list[dict[str, Any]]:
    values, indices = probs.topk(min(k, len(probs)))
    return [{"rank": r + 1, "wnid": wnids[i], "name": names[i], "probability": round(float(p), 6)}
            for r, (p, i) in enumerate(zip(values.tolist(), indices.tolist()))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="alexnet-classify",
        description="Classify images with a trained AlexNet from its checkpoint or export alone, printing each "
                    "image's top-5 classes and probabilities. Files are read without running code from them.")
    parser.add_argument("checkpoint", type=Path, help="a checkpoint (.ckpt) or an export (alexnet-export)")
    parser.add_argument("paths", type=Path, nargs="+", help="image files, or folders searched for image files")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON list of {file, top5} on stdout")
    form.add_argument("--csv", action="store_true", help="CSV rows file,rank,wnid,name,probability on stdout")
    parser.add_argument("--ten-crop", action="store_true",
                        help="average the softmax over the paper's ten crops (Section 4.1) instead of the centre crop")
    args = parser.parse_args(argv)
    try:
        record, weights = read(args.checkpoint)
    except (UnsafeFile, ValueError, FileNotFoundError) as err:
        print(f"alexnet-classify: error: {err}", file=sys.stderr)
        return 2
    model, preprocess = build_network(record, weights), preprocessing(record, args.ten_crop)
    wnids, names = record["data"]["wnids"], record["data"]["names"]
    skips: list[Path] = []

    def skipped(file: Path, reason: str) -> None:
        skips.append(file)
        print(f"alexnet-classify: skipped {file}: {reason}", file=sys.stderr)

    files = list(image_files(args.paths))
    rows = [{"file": str(f), "top5": top(p, wnids, names)} for f, p in classify(model, preprocess, files,
                                                                                    skipped=skipped)]
    if args.json:
        print(json.dumps(rows, indent=1))
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["file", "rank", "wnid", "name", "probability"])
        writer.writerows([r["file"], *(t[k] for k in ("rank", "wnid", "name", "probability"))]
                         for r in rows for t in r["top5"])
    else:
        for row in rows:
            print(row["file"])
            for t in row["top5"]:
                label = t["name"] if t["name"] == t["wnid"] else f"{t['name']} ({t['wnid']})"
                print(f"  {t['rank']}. {t['probability']:.4f}  {label}")
    if skips:
        print(f"alexnet-classify: {len(rows)} image(s) classified, {len(skips)} skipped", file=sys.stderr)
    return 0 if rows or not files else 1


def console() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    console()
