"""Throughput of the training input and of the training step on this machine (the CPU, or one GPU), in one run:
a table, and JSON with --json.

    python experiments/benchmark.py [--quick] [--images N] [--batch 128] [--workers W]
                                    [--parts one-core loader step fit] [--steps fp32 fp32+no-lrn ...]
                                    [--json results.json]

0. Unless only the step is asked for: generates an ImageNet-shaped set in a temporary folder (--images photo-like
   JPEG files of 300-500 x 250-450 pixels, about ILSVRC-2012's 400x350 on average, about 110 KB each, in --classes class
   folders, one validation image per class), prepares it as JPEG shards (the default) and as raw uint8 shards, and
   reports their disk use (du) and the PSNR of the JPEG shards against the raw ones.
1. one-core: training images per second on one core (no loader workers, one torch thread) for a classic PIL
   ImageFolder pipeline, ours image by image, and ours from raw and from JPEG shards.
2. loader: training images per second that the real DataModule's loader delivers, augmented, on the device: JPEG
   shards decoded in --workers CPU loader workers, decoded on the GPU (nvjpeg; on a GPU only), and raw shards.
3. step: images per second of the paper network's training step (forward, backward, SGD) on a fixed batch for fp32,
   bf16, channels_last and compile, and without LRN; each configuration alone in a process of its own, as training
   runs; the median step counts.
4. fit: images per second of Lightning's fit with the real DataModule from the JPEG shards and the CLI's training
   callbacks, with the packaged configs/gpu.yaml's speed options on a GPU; timed after its first steps.

Every rate comes with the hours that 90 epochs of ILSVRC-2012 (1,281,167 images) would take at it. The header and the
JSON record the machine and what else ran on it (load average, the busiest other processes). Imports neither
jsonargparse nor wandb.
"""

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script from a clone, not installed: the package beside this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L
import numpy as np
import torch
import torchvision
import yaml
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as classic

from alexnet_lightning import CONFIGS
from alexnet_lightning.data import shards
from alexnet_lightning.data.datamodule import ImageNetDataModule
from alexnet_lightning.model.module import AlexNetModule
from alexnet_lightning.model.network import AlexNet, LocalResponseNorm
from alexnet_lightning.training.allocator import keep_freed_memory
from alexnet_lightning.training.stops import training_callbacks

PAPER_IMAGES, PAPER_EPOCHS = 1_281_167, 90  # ILSVRC-2012 training set, ~90 epochs (Section 5)
# in_memory=False: ImageNet-sized data is read from its files or shards, never held in memory (data/in_memory.py)
STATISTICS_IMAGES = 256  # mean image and lighting from a sample: the values do not change the speed
# Training-step configurations of the paper network: name -> options of ``training_step``.
STEPS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "fp32+no-lrn": {"lrn": False},
    "fp32+torch-lrn": {"torch_lrn": True},
    "fp32+channels-last": {"channels_last": True},
    "fp32+compile": {"compile": "default"},
    "bf16": {"bf16": True},
    "bf16+channels-last": {"bf16": True, "channels_last": True},
    "bf16+channels-last+compile": {"bf16": True, "channels_last": True, "compile": "default"},
    "bf16+channels-last+compile+no-lrn": {"bf16": True, "channels_last": True, "compile": "default", "lrn": False},
    "bf16+channels-last+compile+cuda-graphs": {"bf16": True, "channels_last": True, "compile": "reduce-overhead"},
}
PARTS = ("one-core", "loader", "step", "fit")
QUICK = {"images": 3000, "warmup": 5, "iters": 15, "fit_epochs": 1, "fit_skip": 10}  # --quick's defaults
QUICK_STEPS = {"cpu": ["fp32", "fp32+channels-last"],
               "cuda": ["fp32", "bf16+channels-last", "bf16+channels-last+compile",
                        "bf16+channels-last+compile+cuda-graphs"]}
DEFAULT_STEPS = {
    "cpu": ["fp32", "fp32+no-lrn", "fp32+torch-lrn", "fp32+channels-last", "bf16", "fp32+compile"],
    "cuda": ["fp32", "fp32+no-lrn", "bf16", "bf16+channels-last", "bf16+channels-last+compile",
             "bf16+channels-last+compile+no-lrn", "bf16+channels-last+compile+cuda-graphs"],
}


def hours(images_per_s: float) -> float:
    """Hours for the paper's 90 epochs at this rate."""
    return PAPER_EPOCHS * PAPER_IMAGES / images_per_s / 3600


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on, and what else was running."""
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpus": os.cpu_count(), "load_average": os.getloadavg(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "lightning": L.__version__}
    try:
        ps = subprocess.run(["ps", "-eo", "pid,pcpu,rss,comm", "--sort=-pcpu"], capture_output=True, text=True)
        rows = [line.split(None, 3) for line in ps.stdout.splitlines()[1:]]
        info["busiest_other_processes"] = [
            {"pid": int(pid), "cpu_percent": float(cpu), "rss_mb": int(rss) // 1024, "command": command}
            for pid, cpu, rss, command in rows if int(pid) != os.getpid()][:5]
    except (OSError, ValueError):
        info["busiest_other_processes"] = "ps unavailable"
    return info


# 1. The data set, its shards, one core


def _write_photo(job: tuple[Path, int]) -> None:
    """A photo-like JPEG: colour structure at four scales, objects with edges, a fine grain and sensor noise.
    Its 256x256 square takes about 25 KB at quality 90, near ImageNet's (FFCV: 22 GB for ImageNet at 256 px on the
    longer side, about 17 KB an image). Saved at quality 97 without chroma subsampling, like many camera files, the
    file takes about 110 KB (0.7 bytes per pixel), near ILSVRC-2012's training images (the 138 GiB archive over
    1,281,167 images: about 115 KB); at quality 90 it took 55 KB, which the classic pipeline decodes faster."""
    path, seed = job
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(300, 501)), int(rng.integers(250, 451))
    field = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((3, 0.5), (12, 0.25), (48, 0.15), (160, 0.1)):
        grid = rng.integers(0, 256, (max(2, cells * height // width), cells, 3), dtype=np.uint8)
        field += weight * np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), np.float32)
    canvas = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(8):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = [x, y, x + int(rng.integers(20, width // 2)), y + int(rng.integers(20, height // 2))]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    grain = rng.normal(0, 16, (height // 2 + 1, width // 2 + 1)).astype(np.float32)
    grain = np.asarray(Image.fromarray(grain).resize((width, height), Image.BILINEAR))[..., None]
    image = 0.7 * np.asarray(canvas, np.float32) + 0.3 * field + grain + rng.normal(0, 3, field.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=97, subsampling=0)


def generate(root: Path, images: int, classes: int, workers: int) -> None:
    """``images`` training images in ``classes`` folders (image i in class i % classes), one validation image per
    class, each from its own seed."""
    jobs = [(root / "train" / f"c{i % classes:04d}" / f"{i:06d}.jpg", i) for i in range(images)]
    jobs += [(root / "val" / f"c{c:04d}" / f"v{c:04d}.jpg", images + c) for c in range(classes)]
    with multiprocessing.Pool(workers) as pool:
        pool.map(_write_photo, jobs, chunksize=64)


def disk_use(folder: Path) -> int:
    """Bytes of disk the folder's files take (what du counts)."""
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())


def psnr(jpeg: Path, raw: Path, count: int) -> dict[str, float]:
    """Per-image PSNR (dB, peak 255) of the first ``count`` JPEG-shard training images against the raw ones."""
    decoded, exact = shards.PreparedSplit(jpeg, "train"), shards.PreparedSplit(raw, "train")
    count = min(count, len(exact))
    errors = []
    for start in range(0, count, 256):
        keys = list(range(start, min(count, start + 256)))
        a, b = decoded.__getitems__(keys)[0].double(), exact.__getitems__(keys)[0].double()
        errors.append((a - b).square().mean((1, 2, 3)))
    mse = torch.cat(errors)
    db = 10 * torch.log10(255**2 / mse.clamp_min(1e-12))
    return {"images": count, "min_db": db.min().item(), "p1_db": db.quantile(0.01).item(),
            "median_db": db.median().item(), "of_mean_mse_db": (10 * torch.log10(255**2 / mse.mean())).item()}


def prepare_both(root: Path, tmp: Path, workers: int, quality: int) -> tuple[dict[str, Any], Path, Path]:
    """JPEG and raw shards of the generated set; their sizes, preparation rates and the PSNR between them."""
    results, folders = {}, {}
    for encoding in ("jpeg", "raw"):
        start = time.perf_counter()
        folders[encoding] = shards.prepare(str(root), tmp / encoding, workers=workers, encoding=encoding,
                                             quality=quality)
        seconds = time.perf_counter() - start
        meta = shards.read_meta(folders[encoding])
        count = sum(split["images"] for split in meta["splits"].values())
        results[encoding] = {"disk_bytes": disk_use(folders[encoding]), "prepare_images_per_s": count / seconds}
    results["jpeg_to_raw"] = results["jpeg"]["disk_bytes"] / results["raw"]["disk_bytes"]
    results["psnr"] = psnr(folders["jpeg"], folders["raw"], 2000)
    return results, folders["jpeg"], folders["raw"]


def timed(batches: Iterable, count: int) -> float:
    """Images per second over the first ``count`` images of ``batches`` (batches of (images, labels, ...))."""
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch[1])
        if seen >= count:
            break
    return seen / (time.perf_counter() - start)


def augmented(dm: ImageNetDataModule, loader: DataLoader,
              device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of a prepared DataModule's training loader as training gets them: moved (JPEG: decoded there) to
    ``device`` and augmented there."""
    for batch in loader:
        images, labels, _, seed = dm.transfer_batch_to_device(batch, device, 0)
        yield dm.augment(images, "train", int(seed)), labels


def one_core(root: Path, jpeg: Path, raw: Path, batch: int, count: int) -> dict[str, dict[str, float]]:
    """Training images per second on one core (no loader processes, one torch thread), each pipeline timed over
    the same images after a first pass that fills the page cache."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    # The torchvision ImageNet example's pipeline, the usual choice.
    pil = torchvision.datasets.ImageFolder(str(root / "train"), classic.Compose([
        classic.RandomResizedCrop(224), classic.RandomHorizontalFlip(), classic.ToTensor(),
        classic.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]))
    count = min(count, len(pil))
    pipelines: dict[str, Callable[[], Iterable]] = {
        "classic PIL ImageFolder (RandomResizedCrop)": lambda: DataLoader(Subset(pil, range(count)), batch,
                                                                          shuffle=True)}
    files = ImageNetDataModule(batch, root=str(root), num_workers=0, statistics_images=STATISTICS_IMAGES,
                               in_memory=False)
    files.setup("fit")
    pipelines["ours, image by image (TrainTransforms)"] = files.train_dataloader
    for name, folder in (("raw", raw), ("JPEG", jpeg)):
        dm = ImageNetDataModule(batch, root=str(folder), num_workers=0, statistics_images=STATISTICS_IMAGES,
                                in_memory=False, decode="workers")
        dm.setup("fit")
        pipelines[f"ours, {name} shards + batch augmentation"] = lambda dm=dm: augmented(dm, dm.train_dataloader(), cpu)
    results = {}
    for name, pipeline in pipelines.items():
        timed(pipeline(), count)  # page cache, allocator
        results[name] = {"images_per_s_per_core": timed(pipeline(), count)}
    torch.set_num_threads(threads)
    return results


# 2. The loader


def loaders(jpeg: Path, raw: Path, batch: int, workers: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Images per second delivered augmented on ``device`` by the DataModule's training loader, over its second
    epoch (the first starts the loader's persistent workers and fills the page cache)."""
    setups = [(f"JPEG shards, decoded in {workers} CPU loader workers", jpeg, "workers")]
    if device.type == "cuda":  # the stream guard's cost (shards.guarded_decode): with it, as training runs, and not
        setups.append(("JPEG shards, decoded on the GPU (nvjpeg)", jpeg, "device"))
        setups.append(("JPEG shards, decoded on the GPU, unguarded (unsafe)", jpeg, "device"))
    setups.append((f"raw shards, {workers} loader workers", raw, "workers"))
    results = {}
    for name, folder, decode in setups:
        shards.guard_device_decode = "unguarded" not in name
        dm = ImageNetDataModule(batch, root=str(folder), num_workers=workers, statistics_images=STATISTICS_IMAGES,
                                in_memory=False, decode=decode)
        dm.setup("fit")
        loader = dm.train_dataloader()
        timed(augmented(dm, loader, device), len(dm.train_set))
        start, seen = time.perf_counter(), 0
        for _, labels in augmented(dm, loader, device):
            seen += len(labels)
        synchronize(device)
        rate = seen / (time.perf_counter() - start)
        results[name] = {"images_per_s": rate, "paper_90_epochs_h": hours(rate)}
    shards.guard_device_decode = True
    return results


# 3. The training step, each configuration in a process of its own


def with_torch_lrn(model: AlexNet) -> AlexNet:
    """Swap our LRN for torch.nn.LocalResponseNorm, which divides alpha by n as the authors' code did.

    Its window crosses the tower boundary, so the values differ slightly: a comparison of cost only."""
    for name, layer in list(model.features.named_children()):
        if isinstance(layer, LocalResponseNorm):
            alpha = layer.alpha if layer.formula == "cuda-convnet2" else layer.alpha * layer.size
            setattr(model.features, name, nn.LocalResponseNorm(layer.size, alpha, layer.beta, layer.k))
    return model


def training_step(batch: int, size: int, device: torch.device, lrn: bool = True, torch_lrn: bool = False,
                  channels_last: bool = False, bf16: bool = False,
                  compile: str | None = None) -> tuple[Callable[[], None], int]:
    """One SGD step of the paper network on a fixed random batch, and its floating-point operations."""
    model = AlexNet(lrn=lrn, input_size=size)
    model = (with_torch_lrn(model) if torch_lrn else model).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    network = model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(network(x), y)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    if compile:
        network = torch.compile(model, mode=compile)
    return step, counter.get_total_flops()


def measure_step(name: str, batch: int, size: int, warmup: int, iters: int) -> dict[str, Any]:
    """The median step time of one configuration (run in a process of its own)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # as configs/gpu.yaml trains
    step, flops = training_step(batch, size, device, **STEPS[name])
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"images_per_s": batch / seconds, "gflop_per_s": flops / seconds / 1e9,
            "paper_90_epochs_h": hours(batch / seconds), "step_seconds": times}


# 4. fit


class Throughput(L.Callback):
    """Training images per second of a fit, from the start of its training batch ``skip`` (after compilation and
    cuDNN's timing) to the end of training."""

    def __init__(self, skip: int) -> None:
        self.skip, self.images, self.start, self.seconds = skip, 0, None, None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int) -> None:
        if self.start is None and trainer.global_step >= self.skip:
            synchronize(module.device)
            self.start = time.perf_counter()
        if self.start is not None:
            self.images += len(batch[1])

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        synchronize(module.device)
        self.seconds = time.perf_counter() - self.start if self.start is not None else None


def measure_fit(folder: Path, batch: int, workers: int, epochs: int, skip: int) -> dict[str, Any]:
    """Lightning's fit from prepared shards: the paper's configs/paper.yaml model, with configs/gpu.yaml's speed
    options on a GPU; a step learning-rate schedule and no validation (the plateau schedule needs validation
    errors, which are not timed)."""
    on_gpu = torch.cuda.is_available()
    model = yaml.safe_load((CONFIGS / "paper.yaml").read_text())["model"] | {"lr_schedule": "step"}
    trainer_options: dict[str, Any] = {"accelerator": "gpu" if on_gpu else "cpu", "devices": 1}
    if on_gpu:
        speed = yaml.safe_load((CONFIGS / "gpu.yaml").read_text())
        model |= speed["model"]
        trainer_options |= speed["trainer"]
    dm = ImageNetDataModule(batch, root=str(folder), num_workers=workers, statistics_images=STATISTICS_IMAGES,
                            in_memory=False)
    module = AlexNetModule(**model, num_classes=dm.num_classes)
    throughput = Throughput(skip)
    trainer = L.Trainer(max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[*training_callbacks(), throughput], **trainer_options)
    trainer.fit(module, dm)
    if throughput.seconds is None:
        raise ValueError(f"--fit-skip {skip} leaves no step to time in {trainer.global_step} steps")
    rate = throughput.images / throughput.seconds
    return {"images_per_s": rate, "paper_90_epochs_h": hours(rate), "timed_images": throughput.images,
            "options": {**trainer_options, **{k: model[k] for k in ("channels_last", "compile") if k in model}},
            "decode": "device" if dm._decodes_on_device() else "workers"}


def in_own_process(*args: str) -> dict[str, Any]:
    """Runs this script with ``args`` in a new process and returns the JSON it prints last (or the error)."""
    run = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        return {"error": f"exit status {run.returncode}: {run.stderr[-2000:]}"}
    return json.loads(lines[-1])


# The report


def print_rates(title: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"{'':<52} {'img/s':>9} {'90 epochs (h)':>14}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<52} failed: {r['error'].strip().splitlines()[-1:]}")
        else:
            print(f"{name:<52} {r['images_per_s']:9.1f} {hours(r['images_per_s']):14.1f}")


def print_machine(m: dict[str, Any], kept: bool) -> None:
    print(f"{m['device']}, {m['cpus']} CPUs, torch {m['torch']}, torchvision {m['torchvision']}, lightning "
          f"{m['lightning']}; load average {' '.join(f'{x:.2f}' for x in m['load_average'])}; freed memory kept: "
          f"{kept}")
    if isinstance(m["busiest_other_processes"], list):
        print("busiest other processes: " + ", ".join(
            f"{p['command']} ({p['cpu_percent']:.0f}% CPU)" for p in m["busiest_other_processes"]))


def print_prepared(r: dict[str, Any], quality: int) -> None:
    print(f"{'shards':<20} {'du (MB)':>10} {'prepared img/s':>15}")
    for encoding in ("jpeg", "raw"):
        du, rate = r[encoding]["disk_bytes"] / 2**20, r[encoding]["prepare_images_per_s"]
        print(f"{encoding:<20} {du:10.1f} {rate:15.0f}")
    p = r["psnr"]
    print(f"JPEG (quality {quality}) / raw: {r['jpeg_to_raw']:.3f} of the disk; PSNR against raw over {p['images']} "
          f"images: min {p['min_db']:.1f} dB, 1st percentile {p['p1_db']:.1f}, median {p['median_db']:.1f}")


def print_one_core(rows: dict[str, dict[str, float]], batch: int, count: int) -> None:
    print(f"\ntraining-data pipeline on one core, batch {batch}, {count} images")
    print(f"{'pipeline':<52} {'img/s/core':>10} {'vs classic':>10}")
    base = next(iter(rows.values()))["images_per_s_per_core"]
    for name, r in rows.items():
        print(f"{name:<52} {r['images_per_s_per_core']:10.1f} {r['images_per_s_per_core'] / base:9.1f}x")


def lrn_ratios(steps: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Throughput with LRN over without, for each pair of step configurations measured."""
    ratios = {}
    for lrn in ("fp32", "bf16+channels-last+compile"):
        with_lrn, without = steps.get(lrn, {}), steps.get(f"{lrn}+no-lrn", {})
        if "images_per_s" in with_lrn and "images_per_s" in without:
            ratios[lrn] = with_lrn["images_per_s"] / without["images_per_s"]
    return ratios


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help="training images generated (default: 20000 on a GPU, else 2000)")
    parser.add_argument("--classes", type=int, default=1000, help="class folders (at most --images)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the shards")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=227, help="crop side of the training step")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="loader and preparing processes")
    parser.add_argument("--core-images", type=int, default=512, help="images timed per one-core pipeline")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), help="training-step configurations "
                        f"(default on the CPU: {' '.join(DEFAULT_STEPS['cpu'])}; on a GPU: "
                        f"{' '.join(DEFAULT_STEPS['cuda'])})")
    parser.add_argument("--warmup", type=int, help="untimed steps per configuration (default: 10 on a GPU, else 1)")
    parser.add_argument("--iters", type=int, help="timed steps per configuration (default: 30 on a GPU, else 5)")
    parser.add_argument("--fit-epochs", type=int, help="epochs of the fit (default: 3 on a GPU, else 1)")
    parser.add_argument("--fit-skip", type=int, help="untimed first steps of the fit (default: 30 on a GPU, else 2)")
    parser.add_argument("--glibc-default", action="store_true", help="leave glibc's return of freed memory on "
                        "(training keeps it off: memory.keep_freed_memory)")
    parser.add_argument("--quick", action="store_true", help="a smaller run, sized to finish with the self-check "
                        "within a lent GPU's 10-minute command: 3000 images in 100 classes, 4 step configurations, "
                        "5 + 15 steps each, one epoch of fit (given options still win)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # step NAME | fit FOLDER: one measurement
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        args.classes, args.core_images = min(args.classes, 100), min(args.core_images, 256)
    kept = not args.glibc_default and keep_freed_memory()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    warmup, iters = args.warmup or (10 if gpu else 1), args.iters or (30 if gpu else 5)
    epochs = args.fit_epochs or (3 if gpu else 1)
    skip = args.fit_skip if args.fit_skip is not None else (30 if gpu else 2)
    if args.child:
        what, target = args.child
        if what == "step":
            result = measure_step(target, args.batch, args.size, warmup, iters)
        else:
            result = measure_fit(Path(target), args.batch, args.workers, epochs, skip)
        print(json.dumps(result))
        return result

    images = args.images or (20_000 if gpu else 2000)
    classes = min(args.classes, images)
    report: dict[str, Any] = {"machine": machine(device), "freed_memory_kept": kept, "batch": args.batch,
                              "images": images, "classes": classes}
    print_machine(report["machine"], kept)
    common = ["--batch", str(args.batch), "--size", str(args.size), "--workers", str(args.workers),
              "--warmup", str(warmup), "--iters", str(iters), "--fit-epochs", str(epochs), "--fit-skip", str(skip)]
    with tempfile.TemporaryDirectory() as tmp:
        if set(args.parts) - {"step"}:
            root = Path(tmp) / "files"
            start = time.perf_counter()
            generate(root, images, classes, args.workers)
            print(f"\ngenerated {images} training JPEGs (300-500 x 250-450, quality 97, 4:4:4) in {classes} classes, "
                  f"{time.perf_counter() - start:.0f} s")
            report["prepared"], jpeg, raw = prepare_both(root, Path(tmp), args.workers, args.quality)
            print_prepared(report["prepared"], args.quality)
        if "one-core" in args.parts:
            report["one_core"] = one_core(root, jpeg, raw, args.batch, args.core_images)
            print_one_core(report["one_core"], args.batch, args.core_images)
        if "loader" in args.parts:
            report["loader"] = loaders(jpeg, raw, args.batch, args.workers, device)
            print_rates(f"loader: training batches augmented on the {device.type}, batch {args.batch}",
                        report["loader"])
        if "step" in args.parts:
            names = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)[device.type]
            report["step"] = {name: in_own_process("--child", "step", name, *common) for name in names}
            print_rates(f"training step of the paper network (forward, backward, SGD), batch {args.batch}, "
                        f"{args.size}x{args.size}, each alone in its own process, median of {iters} steps",
                        report["step"])
            report["lrn_over_no_lrn"] = lrn_ratios(report["step"])
            for name, ratio in report["lrn_over_no_lrn"].items():
                print(f"{name}: throughput with LRN / without {ratio:.0%}")
        if "fit" in args.parts:
            report["fit"] = in_own_process("--child", "fit", str(jpeg), *common)
            print_rates(f"fit (Lightning, the DataModule from JPEG shards, {args.workers} workers), batch "
                        f"{args.batch}, {epochs} epoch(s) after {skip} untimed steps", {"fit": report["fit"]})
            if "options" in report["fit"]:
                print(f"options: {report['fit']['options']}; decoded in the {report['fit']['decode']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
