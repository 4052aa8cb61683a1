"""Throughput in one run: (a) the training step of the paper network (our LRN, torch's LRN, no LRN) and of
torchvision's alexnet; (b) the training-data pipeline on one core: a classic PIL ImageFolder pipeline, ours
image by image, and ours from prepared shards with whole-batch augmentation.

    python experiments/benchmark.py [--batch 128] [--warmup 1] [--iters 5] [--images 512] [--json results.json]
    python experiments/benchmark.py --only data    # or --only step

The data part writes ImageNet-sized JPEGs (500x375, the ILSVRC-2012 average is about 400x350) into a
temporary folder, prepares them, and times each pipeline over the same images, files in the page cache.
"""

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as classic

from alexnet_lightning import prepared
from alexnet_lightning.cli import keep_freed_memory
from alexnet_lightning.datamodule import ImageNetDataModule
from alexnet_lightning.network import AlexNet, LocalResponseNorm

PAPER_IMAGES, PAPER_EPOCHS = 1_281_167, 90  # ILSVRC-2012 training set, ~90 epochs (Section 5)


def with_torch_lrn(model: AlexNet) -> AlexNet:
    """Swap our LRN for torch.nn.LocalResponseNorm, which divides alpha by n as the authors' code did.

    Its window crosses the tower boundary, so the values differ slightly: a comparison of cost only."""
    for name, layer in list(model.features.named_children()):
        if isinstance(layer, LocalResponseNorm):
            alpha = layer.alpha if layer.formula == "cuda-convnet2" else layer.alpha * layer.size
            torch_lrn = nn.LocalResponseNorm(layer.size, alpha, layer.beta, layer.k)
            setattr(model.features, name, torch_lrn)
    return model


def training_step(model: nn.Module, batch: int, size: int, device: str, channels_last: bool = False,
                  bf16: bool = False) -> tuple[Callable[[], None], int]:
    """One SGD step on a fixed random batch, and its floating-point operations."""
    model = model.to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    return step, counter.get_total_flops()


def measure(steps: dict[str, tuple[Callable[[], None], int]], batch: int, warmup: int, iters: int,
            device: str) -> dict[str, dict[str, float]]:
    """Median step time of each model, the models taking turns step by step, so that a machine whose speed
    drifts (shared cores, clocks) slows them all alike."""
    for step, _ in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, (step, _) in steps.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    results = {}
    for name, (_, flops) in steps.items():
        seconds = statistics.median(times[name])
        results[name] = {"images_per_s": batch / seconds, "gflop_per_s": flops / seconds / 1e9,
                         "paper_90_epochs_h": PAPER_EPOCHS * PAPER_IMAGES / (batch / seconds) / 3600,
                         "step_seconds": times[name]}
    return results


def write_jpegs(root: Path, count: int, classes: int = 4) -> None:
    """ImageNet-like files: smooth random colour fields with noise, 500x375, JPEG quality 90."""
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.uniform(0, 255, (6, 8, 3))
        image = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((500, 375), Image.BICUBIC), np.float32)
        image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
        for split in ("train", "val"):
            path = root / split / f"c{i % classes}" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path, quality=90)


def images_per_second(batches: Iterable, count: int) -> float:
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch[1])
    assert seen == count, (seen, count)
    return count / (time.perf_counter() - start)


def data_pipelines(batch: int, count: int) -> dict[str, dict[str, float]]:
    """Training images per second on one core (no loader processes, one torch thread), each pipeline timed
    over the same files after a first pass that fills the page cache."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "jpeg"
        write_jpegs(root, count)
        dest = prepared.prepare(str(root), Path(tmp) / "prepared")
        # The torchvision ImageNet example's pipeline, the usual choice.
        pil = torchvision.datasets.ImageFolder(str(root / "train"), classic.Compose([
            classic.RandomResizedCrop(224), classic.RandomHorizontalFlip(), classic.ToTensor(),
            classic.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]))
        loaders: dict[str, Callable[[], Iterable]] = {
            "classic PIL ImageFolder (RandomResizedCrop)": lambda: DataLoader(pil, batch, shuffle=True)}
        ours = ImageNetDataModule(batch, root=str(root), num_workers=0, statistics_images=count)
        ours.setup("fit")
        loaders["ours, image by image (TrainPreset)"] = lambda: (b[:2] for b in ours.train_dataloader())
        fast = ImageNetDataModule(batch, root=str(dest), num_workers=0, statistics_images=count)
        fast.setup("fit")
        loaders["ours, prepared shards + batch augmentation"] = lambda: (
            (fast.augment(images, "train", int(seed)), labels)
            for images, labels, _, seed in fast.train_dataloader())
        for name, loader in loaders.items():
            images_per_second(loader(), count)  # page cache, allocator
            results[name] = {"images_per_s_per_core": images_per_second(loader(), count)}
    torch.set_num_threads(threads)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=227)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5, help="timed steps per model, taken in turns; the median counts")
    parser.add_argument("--images", type=int, default=512, help="images in the data-pipeline benchmark")
    parser.add_argument("--only", choices=["step", "data"], help="run one part only")
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave glibc's return of freed memory on (training keeps it off: cli.keep_freed_memory)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    kept = not args.glibc_default and keep_freed_memory()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"device": device, "batch": args.batch, "size": args.size, "freed_memory_kept": kept}
    print(f"freed memory kept for reuse (glibc): {kept}")
    if args.only != "step":
        report["data"] = data_pipelines(args.batch, args.images)
        print(f"training-data pipeline, {args.images} JPEGs of 500x375, batch {args.batch}, one core")
        print(f"{'pipeline':<46} {'img/s/core':>10} {'vs classic':>10}")
        classic_rate = next(iter(report["data"].values()))["images_per_s_per_core"]
        for name, r in report["data"].items():
            print(f"{name:<46} {r['images_per_s_per_core']:10.1f} {r['images_per_s_per_core'] / classic_rate:9.1f}x")
    if args.only == "data":
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return
    models: dict[str, Callable[[], nn.Module]] = {
        "paper, our LRN": AlexNet,
        "paper, nn.LocalResponseNorm": lambda: with_torch_lrn(AlexNet()),
        "paper, no LRN": lambda: AlexNet(lrn=False),
        "torchvision alexnet": torchvision.models.alexnet,
    }
    options: dict[str, dict[str, bool]] = {}
    if device == "cuda":
        options = {"bf16": {"bf16": True}, "channels_last": {"channels_last": True},
                   "bf16 + channels_last": {"bf16": True, "channels_last": True}}
    steps = {name: training_step(make(), args.batch, args.size, device) for name, make in models.items()}
    for name, option in options.items():
        steps[f"paper, our LRN, {name}"] = training_step(AlexNet(), args.batch, args.size, device, **option)
    if device == "cuda":
        steps["paper, our LRN, compiled"] = training_step(torch.compile(AlexNet()), args.batch, args.size, device)
    results = measure(steps, args.batch, args.warmup, args.iters, device)
    print(f"{device}, batch {args.batch}, {args.size}x{args.size}, training step (forward + backward + SGD)")
    print(f"{'model':<40} {'img/s':>8} {'GFLOP/s':>8} {'90 epochs (h)':>14}")
    for name, r in results.items():
        print(f"{name:<40} {r['images_per_s']:8.1f} {r['gflop_per_s']:8.1f} {r['paper_90_epochs_h']:14.1f}")
    ratio = results["paper, our LRN"]["images_per_s"] / results["paper, no LRN"]["images_per_s"]
    print(f"our LRN / no LRN throughput: {ratio:.0%} (median of {args.iters} steps each, models in turns)")
    report["step"] = results
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
