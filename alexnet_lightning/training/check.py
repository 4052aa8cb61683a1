"""The self-check to run first on a new machine (a GPU lent for a day, before a three-day job):

    python -m alexnet_lightning.training.check      (or: alexnet-check)

Runs each GPU path for a few steps on generated data and prints a table (check, result, figure, pass/fail); exits
non-zero naming the checks that failed. On a CPU it runs the paths a CPU has and lists what it skipped. Needs only
torch, torchvision and lightning (no jsonargparse, wandb or scipy). About two minutes on one GPU.
"""

import argparse
import copy
import io
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torchvision.io import encode_jpeg

from alexnet_lightning.data import shards, standin
from alexnet_lightning.data.datamodule import ImageNetDataModule
from alexnet_lightning.model.module import AlexNetModule
from alexnet_lightning.model.network import AlexNet
from alexnet_lightning.model.towers import TowerAlexNet

SMALL = {"num_classes": 10, "width": 0.25, "input_size": 67, "dropout": 0.0, "init": "kaiming"}
OPTIMISATION = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "lr_factor": 0.1, "lr_reductions": 3}
MIN_PSNR_DB = 30.0  # device against CPU decode: far closer than the shards' JPEG against the raw images (> 30 dB)


class Skip(Exception):
    """A check that does not apply on this machine; the message says why."""


def images(count: int, side: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random uint8 images (JPEG-friendly, like photos at this size)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, side // 8, side // 8, generator=generator)
    return (F.interpolate(coarse, size=side, mode="bicubic").clamp(0, 1) * 255).to(torch.uint8)


def jpeg_batch(count: int, seed: int = 0) -> shards.Encoded:
    files = [encode_jpeg(image, quality=90) for image in images(count, seed=seed)]
    offsets = torch.tensor([0, *torch.tensor([len(f) for f in files]).cumsum(0).tolist()])
    return shards.Encoded(torch.cat(files), offsets)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).square().mean().clamp_min(1e-12)
    return float(10 * torch.log10(255**2 / mse))


def needs_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        raise Skip("no GPU")


def check_decode(device: torch.device) -> tuple[str, bool]:
    needs_cuda(device)
    batch = jpeg_batch(64)
    db = psnr(batch.decode(device).cpu(), batch.decode("cpu"))
    return f"PSNR {db:.1f} dB (min {MIN_PSNR_DB:.0f})", db >= MIN_PSNR_DB


def check_decode_guard(device: torch.device, iterations: int = 200) -> tuple[str, bool]:
    """The upstream report's stress loop: decode while the previous step's kernels still read freed memory."""
    needs_cuda(device)
    batch = jpeg_batch(32, seed=1)
    reference = batch.decode(device).clone()
    wrong = 0
    for _ in range(iterations):
        busy = torch.randn(2048, 2048, device=device)
        for _ in range(4):
            busy = busy @ busy.T / 2048  # kernels queued on the caller's stream, reading memory freed below
        del busy
        decoded = batch.decode(device)
        wrong += int(not torch.equal(decoded, reference))
    return f"{wrong}/{iterations} batches wrong", wrong == 0


def sgd_step(module: AlexNetModule, x: torch.Tensor, y: torch.Tensor, bf16: bool = False) -> tuple[float, list]:
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(module(x).float(), y)
    loss.backward()
    return float(loss.detach()), [p.grad.flatten().float() for p in module.parameters()]


def small(device: torch.device, **options) -> AlexNetModule:
    torch.manual_seed(0)
    module = AlexNetModule(**OPTIMISATION, **SMALL, **options).to(device)
    module.configure_model()
    return module


def batch(device: torch.device, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(size, 3, 67, 67, generator=generator)
    return x.to(device), torch.randint(10, (size,), generator=generator).to(device)


def check_bf16(device: torch.device) -> tuple[str, bool]:
    x, y = batch(device)
    loss32, grads32 = sgd_step(small(device), x, y)
    loss16, grads16 = sgd_step(small(device), x, y, bf16=True)
    cosine = float(F.cosine_similarity(torch.cat(grads32), torch.cat(grads16), dim=0))
    return f"loss {loss16:.4f} vs {loss32:.4f}, gradient cosine {cosine:.4f}", (
        abs(loss16 - loss32) < 0.05 * abs(loss32) + 0.05 and cosine > 0.99)


def check_compile(device: torch.device, mode: str = "default") -> tuple[str, bool]:
    if mode == "reduce-overhead":
        needs_cuda(device)
    x, y = batch(device)
    _, eager = sgd_step(small(device), x, y)
    compiled = small(device, compile=True, compile_mode=mode)
    for _ in range(3):  # CUDA graphs are recorded at the first calls, replayed after
        compiled.zero_grad(set_to_none=True)
        _, fast = sgd_step(compiled, x, y)
    error = float((torch.cat(fast) - torch.cat(eager)).abs().max() / torch.cat(eager).abs().max())
    return f"max gradient difference {error:.1e} of the largest", error < 1e-3


def check_checkpoint(device: torch.device) -> tuple[str, bool]:
    """Saved compiled, loaded eager, and back: the same names and weights."""
    x, _ = batch(device, 4)
    compiled = small(device, compile=True)
    compiled(x)  # compiled before it is saved
    buffer = io.BytesIO()
    torch.save(compiled.state_dict(), buffer)
    eager = AlexNetModule(**OPTIMISATION, **SMALL).to(device)
    eager.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    plain = AlexNet(**SMALL).to(device)
    plain.load_state_dict({k.removeprefix("network."): v for k, v in eager.state_dict().items()
                           if k.startswith("network.")})
    again = small(device, compile=True)
    again.load_state_dict(copy.deepcopy(eager.state_dict()))
    with torch.no_grad():
        same = torch.allclose(again.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-4)
    return "compiled -> eager -> plain AlexNet -> compiled", same


def check_towers(device: torch.device) -> tuple[str, bool]:
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        raise Skip("needs two GPUs")
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.spawn(_towers_worker, args=(port, Path(tmp) / "error.pt"), nprocs=2)
        error = torch.load(Path(tmp) / "error.pt")
    return f"logits off the grouped net's by {error:.1e}", error < 1e-3


def _towers_worker(rank: int, port: int, out: Path) -> None:
    """One tower on GPU ``rank``: its logits against the grouped net's on the same weights."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=2, device_id=torch.device("cuda", rank))
    torch.manual_seed(0)
    grouped = AlexNet(**SMALL).cuda()
    x = torch.randn(8, 3, 67, 67, generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        expected = grouped(x)
        error = float((TowerAlexNet(grouped, dist.group.WORLD)(x) - expected).abs().max() / expected.abs().max())
    if rank == 0:
        torch.save(error, out)
    dist.destroy_process_group()


def rate(run: Callable[[], object], count: int, device: torch.device, seconds: float = 5.0) -> float:
    """Images per second of ``run`` (``count`` images each), after two untimed calls."""
    for _ in range(2):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        run()
        done += count
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return done / (time.perf_counter() - start)


def check_step_speed(device: torch.device) -> tuple[str, bool]:
    """The paper network's training step (batch 128, 227 px; bf16 on a GPU)."""
    size = 128 if device.type == "cuda" else 16
    model = AlexNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(size, 3, 227, 227, device=device), torch.randint(1000, (size,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            F.cross_entropy(model(x), y).backward()
        optimizer.step()

    per_s = rate(step, size, device)
    return f"{per_s:.0f} img/s (batch {size})", per_s > 0


def check_loader_speed(device: torch.device) -> tuple[str, bool]:
    """Prepared JPEG shards of generated images through the DataModule's loader, augmented on the device."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "files"
        standin.generate(root, train_per_class=8, val_per_class=1)
        prepared = shards.prepare(str(root), Path(tmp) / "prepared", size=72)
        data = ImageNetDataModule(32, root=str(prepared), resize_size=72, crop_size=67, num_workers=2,
                                  statistics_images=64, decode="device" if device.type == "cuda" else "workers")
        data.setup("fit")
        loader = data.train_dataloader()

        def epoch() -> None:
            for images, labels, _, seed in loader:
                data.augment(data.transfer_batch_to_device((images, labels, _, seed), device, 0)[0], "train", 0)

        per_s = rate(epoch, len(loader) * 32, device, seconds=3.0)
    return f"{per_s:.0f} img/s (72 px shards, 2 workers)", per_s > 0


CHECKS: dict[str, Callable[[torch.device], tuple[str, bool]]] = {
    "device decode vs CPU decode": check_decode,
    "bf16 step vs fp32": check_bf16,
    "compiled vs eager": check_compile,
    "checkpoint compiled/eager": check_checkpoint,
    "CUDA graphs (reduce-overhead)": lambda device: check_compile(device, "reduce-overhead"),
    "towers on NCCL": check_towers,
    "decode guard stress loop": check_decode_guard,
    "training step speed": check_step_speed,
    "loader speed": check_loader_speed,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), help="run these checks only")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"alexnet-lightning self-check on {name}, torch {torch.__version__}")
    print(f"| {'check':<30} | {'result':<8} | {'figure':<52} | {'pass':<4} |")
    print(f"|{'-' * 32}|{'-' * 10}|{'-' * 54}|{'-' * 6}|")
    failed, skipped = [], []
    for check, run in CHECKS.items():
        if args.only and check not in args.only:
            continue
        start = time.perf_counter()
        try:
            figure, passed = run(device)
            result = "ok" if passed else "FAILED"
        except Skip as why:
            figure, passed, result = f"skipped: {why}", True, "skipped"
            skipped.append(check)
        except Exception as err:  # a crash is a failed check, reported with the others
            figure, passed, result = f"{type(err).__name__}: {err}"[:52], False, "error"
        failed += [] if passed else [check]
        figure = f"{figure} [{time.perf_counter() - start:.0f} s]"
        print(f"| {check:<30} | {result:<8} | {figure:<52} | {'yes' if passed else 'NO':<4} |", flush=True)
    if skipped:
        print(f"skipped on this machine: {', '.join(skipped)}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()
