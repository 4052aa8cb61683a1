"""Training-step throughput of the paper network (our LRN, torch's LRN, no LRN) and torchvision's alexnet.

    python experiments/benchmark.py [--batch 128] [--warmup 2] [--iters 5] [--json results.json]
"""

import argparse
import json
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from alexnet_lightning.network import AlexNet, LocalResponseNorm

PAPER_IMAGES, PAPER_EPOCHS = 1_281_167, 90  # ILSVRC-2012 training set, ~90 epochs (Section 5)


def with_torch_lrn(model: AlexNet) -> AlexNet:
    """Swap our LRN for torch.nn.LocalResponseNorm; alpha * n because torch divides alpha by n.

    Its window crosses the tower boundary, so the values differ slightly: a comparison of cost only."""
    for name, layer in list(model.features.named_children()):
        if isinstance(layer, LocalResponseNorm):
            torch_lrn = nn.LocalResponseNorm(layer.size, layer.alpha * layer.size, layer.beta, layer.k)
            setattr(model.features, name, torch_lrn)
    return model


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def measure(model: nn.Module, batch: int, size: int, warmup: int, iters: int, device: str,
            channels_last: bool = False, bf16: bool = False) -> dict[str, float]:
    model = model.to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    step = training_step(model, x, y)
    with torch.autocast(device, torch.bfloat16, enabled=bf16):
        with FlopCounterMode(display=False) as counter:
            step()
        for _ in range(warmup):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / iters
    return {"images_per_s": batch / seconds, "gflop_per_s": counter.get_total_flops() / seconds / 1e9,
            "paper_90_epochs_h": PAPER_EPOCHS * PAPER_IMAGES / (batch / seconds) / 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=227)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models: dict[str, Callable[[], nn.Module]] = {
        "paper, our LRN": AlexNet,
        "paper, nn.LocalResponseNorm": lambda: with_torch_lrn(AlexNet()),
        "paper, no LRN": lambda: AlexNet(lrn=False),
        "torchvision alexnet": torchvision.models.alexnet,
    }
    results = {name: measure(make(), args.batch, args.size, args.warmup, args.iters, device)
               for name, make in models.items()}
    if device == "cuda":
        options = {"bf16": {"bf16": True}, "channels_last": {"channels_last": True},
                   "bf16 + channels_last": {"bf16": True, "channels_last": True}}
        for name, option in options.items():
            results[f"paper, our LRN, {name}"] = measure(AlexNet(), args.batch, args.size, args.warmup,
                                                         args.iters, device, **option)
        results["paper, our LRN, compiled"] = measure(torch.compile(AlexNet()), args.batch, args.size,
                                                      args.warmup, args.iters, device)
    print(f"{device}, batch {args.batch}, {args.size}x{args.size}, training step (forward + backward + SGD)")
    print(f"{'model':<40} {'img/s':>8} {'GFLOP/s':>8} {'90 epochs (h)':>14}")
    for name, r in results.items():
        print(f"{name:<40} {r['images_per_s']:8.1f} {r['gflop_per_s']:8.1f} {r['paper_90_epochs_h']:14.1f}")
    ratio = results["paper, our LRN"]["images_per_s"] / results["paper, no LRN"]["images_per_s"]
    print(f"our LRN / no LRN throughput: {ratio:.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "batch": args.batch, "size": args.size, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
