"""The paper's pictures of what the network learned (Section 6.1), from any checkpoint or export.

Figure 3: conv1's kernels, one row block per tower, and each tower's colour specificity: the fraction of a kernel's
energy outside the luminance direction (1, 1, 1)/sqrt(3), after removing the kernel's mean, averaged over the tower's
kernels. A grey kernel (R = G = B at every pixel) scores 0; a kernel of independent random values about 2/3; a kernel
that only contrasts colours (R against G at the same brightness) 1. The paper: tower 1 "largely color-agnostic",
tower 2 "largely color-specific", in every run "modulo a renumbering of the GPUs".

Figure 4: test images with their top-5 classes and probabilities; for a few test images, the training images whose
fc7 vectors (the last hidden layer, after its ReLU) are nearest in Euclidean distance.

``alexnet-figures CHECKPOINT... --out DIR [--data ROOT]`` or ``alexnet-figures --study results/STUDY --out DIR``.
"""

import argparse
import json
import math
import re
from pathlib import Path

import torch
from torch import Tensor

from alexnet_lightning.data import standin
from alexnet_lightning.data.sources import load_rgb, resize_and_centre
from alexnet_lightning.model.network import AlexNet
from alexnet_lightning.use.classify import build_network, image_files, preprocessing
from alexnet_lightning.use.record import read

LUMINANCE = torch.ones(3) / math.sqrt(3)
CLAIM = ('Paper (Section 6.1): "The kernels on GPU 1 are largely color-agnostic, while the kernels on GPU 2 are '
         'largely color-specific. This kind of specialization occurs during every run" (modulo a renumbering).')
SCALE = "0: grey kernels; about 0.67: random kernels; 1: kernels that only contrast colours"


def colour_specificity(kernels: Tensor) -> Tensor:
    """[K] for [K, 3, h, w] kernels: the fraction of each kernel's energy (its mean removed) outside luminance."""
    centred = kernels.double() - kernels.double().mean((1, 2, 3), keepdim=True)
    grey = torch.einsum("kchw,c->khw", centred, LUMINANCE.double()).square().sum((1, 2))
    total = centred.square().sum((1, 2, 3))
    return torch.where(total > 0, 1 - grey / total.clamp_min(1e-300), 0.0).float()


def tower_specificity(network: AlexNet) -> list[float]:
    """Each tower's mean colour specificity of its conv1 kernels (tower 1 first)."""
    weight = network.features.conv1.weight.detach().cpu()
    return [float(colour_specificity(k).mean()) for k in weight.chunk(network.towers)]


@torch.no_grad()
def fc7(network: AlexNet, images: Tensor) -> Tensor:
    """[B, D] fc7 vectors of [B, 3, S, S] images: the last hidden layer after its ReLU (dropout off in eval mode)."""
    x = network.features(images)
    for name, layer in network.classifier.named_children():
        x = layer(x)
        if name == "fc7_act":
            return x
    raise ValueError("the network has no fc7_act layer")


def nearest(queries: Tensor, base: Tensor, k: int) -> Tensor:
    """[Q, k] indices into ``base`` [N, D] of the k vectors nearest each query [Q, D] in Euclidean distance."""
    return torch.cdist(queries.double(), base.double()).topk(min(k, len(base)), largest=False).indices


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def kernel_figure(network: AlexNet, title: str, out: Path) -> list[float]:
    """Figure 3: the conv1 kernels of each tower in a row block, each kernel scaled to [0, 1] on its own;
    returns the towers' colour specificities."""
    plt = _pyplot()
    weight = network.features.conv1.weight.detach().cpu()
    scores = tower_specificity(network)
    per_row = min(16, len(weight) // network.towers)
    rows = math.ceil(len(weight) // network.towers / per_row)
    fig, axes = plt.subplots(network.towers, 1, figsize=(0.5 * per_row + 0.4, network.towers * (0.5 * rows + 0.45)
                                                         + 0.35), squeeze=False)
    for ax, kernels, score, t in zip(axes[:, 0], weight.chunk(network.towers), scores, range(1, 3)):
        low = kernels.amin((1, 2, 3), keepdim=True)
        scaled = (kernels - low) / (kernels.amax((1, 2, 3), keepdim=True) - low).clamp_min(1e-12)
        side = scaled.shape[-1] + 1
        canvas = torch.ones(3, rows * side, per_row * side)
        for i, kernel in enumerate(scaled):
            r, c = divmod(i, per_row)
            canvas[:, r * side : r * side + side - 1, c * side : c * side + side - 1] = kernel
        ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"tower {t}: {len(kernels)} kernels, colour specificity {score:.3f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return scores


def neighbours_figure(checkpoint: Path, root: Path, out: Path, queries: int = 4, k: int = 5,
                      train_sample: int = 2000) -> None:
    """Figure 4: ``queries`` validation images of ``root`` (spread over its classes), each with its top-5 classes
    and probabilities, and the ``k`` training images nearest it in fc7 distance (of ``train_sample`` sampled)."""
    plt = _pyplot()
    record, weights = read(checkpoint)
    network, preprocess, names = build_network(record, weights), preprocessing(record), record["data"]["names"]
    tests = list(image_files([root / "val"]))
    tests = [tests[round(i * (len(tests) - 1) / max(1, queries - 1))] for i in range(queries)]
    train = list(image_files([root / "train"]))
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:train_sample].tolist()
    train = [train[i] for i in sorted(chosen)]
    base = torch.cat([fc7(network, torch.stack([preprocess(load_rgb(f)) for f in train[i : i + 64]]))
                      for i in range(0, len(train), 64)])
    inputs = torch.stack([preprocess(load_rgb(f)) for f in tests])
    with torch.no_grad():
        probs = network(inputs).softmax(-1)
    found = nearest(fc7(network, inputs), base, k)
    show = resize_and_centre(record["data"]["resize_size"])
    fig, axes = plt.subplots(queries, k + 1, figsize=(1.6 * (k + 1) + 1.6, 1.9 * queries), squeeze=False)
    for row, (file, p, hits) in enumerate(zip(tests, probs, found)):
        values, indices = p.topk(min(5, len(p)))
        label = "\n".join(f"{v:.2f} {names[i]}" for v, i in zip(values.tolist(), indices.tolist()))
        for col, path in enumerate([file, *(train[h] for h in hits.tolist())]):
            ax = axes[row, col]
            ax.imshow(show(load_rgb(path)).permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlabel(path.parent.name, fontsize=7)
        axes[row, 0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    axes[0, 0].set_title("test image", fontsize=8)
    for col in range(1, k + 1):
        axes[0, col].set_title(f"fc7 neighbour {col}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def study_checkpoints(study: Path) -> dict[str, Path]:
    """A study's cells' checkpoints by "variant/seedN": each cell's last.ckpt (the end of its training)."""
    found = {}
    for ckpt in sorted(study.glob("runs/*/seed*/checkpoints/last.ckpt")):
        found[f"{ckpt.parents[2].name}/{ckpt.parents[1].name}"] = ckpt
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="alexnet-figures",
        description="The paper's Figures 3 and 4 (Section 6.1) from checkpoints or exports: conv1's kernels per tower "
                    "with each tower's colour specificity, and test images with their top-5 classes and their "
                    "nearest training images in fc7.")
    parser.add_argument("checkpoints", type=Path, nargs="*", help="checkpoints (.ckpt) or exports")
    parser.add_argument("--study", type=Path, help="a study folder (results/STUDY): every cell's last.ckpt")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs and colour.json")
    parser.add_argument("--data", type=Path, help="data root (train/ and val/ folders) for Figure 4; default: the "
                        "checkpoint's recorded root, or the built-in stand-in")
    parser.add_argument("--queries", type=int, default=4, help="test images in Figure 4's rows")
    parser.add_argument("--neighbours", type=int, default=5, help="nearest training images per test image")
    parser.add_argument("--train-sample", type=int, default=2000, help="training images searched")
    parser.add_argument("--no-neighbours", action="store_true", help="Figure 3 only")
    args = parser.parse_args(argv)
    runs = {path.stem: path for path in args.checkpoints} | (study_checkpoints(args.study) if args.study else {})
    if not runs:
        parser.error("name checkpoints or a --study with finished cells")
    print(CLAIM)
    print(f"Colour specificity ({SCALE}):")
    table = {}
    for label, path in runs.items():
        record, weights = read(path)
        network = build_network(record, weights)
        name = re.sub(r"[^\w.-]+", "-", label)
        scores = kernel_figure(network, f"conv1 kernels, {label}", args.out / f"kernels-{name}.png")
        table[label] = {"checkpoint": str(path), "towers": network.towers, "tower_specificity": scores,
                        "global_step": record.get("global_step")}
        towers = "  ".join(f"tower {t + 1} {s:.3f}" for t, s in enumerate(scores))
        difference = f"  (difference {scores[1] - scores[0]:+.3f})" if len(scores) == 2 else ""
        print(f"  {label} (step {record.get('global_step')}): {towers}{difference}")
        if not args.no_neighbours and (not args.study or label.endswith("seed0")):
            root = args.data or (Path(record["data"]["root"]) if record["data"].get("root") else standin.ensure())
            neighbours_figure(path, root, args.out / f"neighbours-{name}.png", args.queries, args.neighbours,
                              args.train_sample)
    (args.out / "colour.json").write_text(json.dumps(table, indent=1))
    print(f"Wrote the figures and colour.json into {args.out}")
    return 0


def console() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    console()
