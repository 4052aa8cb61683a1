"""Export a trained network: ``alexnet-export CHECKPOINT OUT`` writes OUT (safetensors: the weights, the mean, the
inference record as JSON metadata; no code) and a model card beside it, OUT with the suffix ``.md``.

torchvision's ``alexnet`` is the later one-tower network of "One weird trick" (Krizhevsky 2014), with other layer
widths and no LRN: these weights cannot be loaded into it. Load an export with ``use.classify.load`` or the
repository's ``hubconf.py``.
"""

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from alexnet_lightning import CONFIGS
from alexnet_lightning.files import write_atomic
from alexnet_lightning.model.network import AlexNet
from alexnet_lightning.use.record import UnsafeFile, read, to_export

CLAIMS = {"lrn_formula": "LRN formula (docs/paper.md#cuda-convnet2)", "lighting_formula": "PCA lighting formula",
          "lighting_rescale": "lighting rescale (cuda-convnet2)"}


def export(checkpoint: Path, out: Path) -> Path:
    """Writes the export OUT and its model card; returns the card's path."""
    from safetensors.torch import save

    record, weights = read(checkpoint)
    tensors, metadata = to_export(record, weights)
    write_atomic(out, lambda f: f.write(save(tensors, metadata)))
    card = out.with_suffix(".md")
    text = model_card(record, checkpoint, out.name)
    write_atomic(card, lambda f: f.write(text.encode()))
    return card


def preset(network: dict[str, Any], data: dict[str, Any]) -> str | None:
    """The packaged preset whose architecture and data sizes the record matches, if any."""
    for path in sorted((CONFIGS / "presets").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        model = {k: v for k, v in config.get("model", {}).items() if k in inspect.signature(AlexNet).parameters}
        sizes = {k: v for k, v in config.get("data", {}).items() if k in ("resize_size", "value_scale", "crop_size")}
        if all(network.get(k) == v for k, v in model.items()) and all(data.get(k) == v for k, v in sizes.items()):
            return path.stem
    return None


def measured_errors(record: dict[str, Any], checkpoint: Path) -> dict[str, float]:
    """The errors recorded when the checkpoint was written, and those of a result.json beside it (a study's cell,
    whose test errors come from the ten-crop test after training)."""
    errors = dict(record.get("measured") or {})
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        result = folder / "result.json"
        if result.is_file():
            values = json.loads(result.read_text())
            errors |= {k: float(v) for k, v in values.items() if k.endswith("_error") and isinstance(v, (int, float))}
            break
    return errors


def model_card(record: dict[str, Any], checkpoint: Path, name: str) -> str:
    data, network = record["data"], record["network"]
    defaults = {k: p.default for k, p in inspect.signature(AlexNet).parameters.items()}
    changed = {k: v for k, v in network.items() if k != "num_classes" and v != defaults.get(k)}
    found = preset(network, data)
    errors = measured_errors(record, checkpoint)
    mean = "mean image" if data["mean"].dim() == 3 else "channel mean"
    source = data.get("root") or "the built-in stand-in (shapes and textures; colour carries no label information)"
    lines = [
        f"# {name}: AlexNet (Krizhevsky, Sutskever, Hinton 2012), alexnet-lightning",
        "",
        f"Exported from `{checkpoint}`. Load it with `alexnet_lightning.use.classify.load(\"{name}\")`, "
        f"`alexnet-classify {name} IMAGES...` or `torch.hub.load(CLONE, \"alexnet\", source=\"local\", "
        f"export=\"{name}\")`. torchvision's `alexnet` is the later one-tower network of \"One weird trick\", with "
        "other widths: these weights do not fit it.",
        "",
        f"- Data: {source}; {len(data['wnids'])} classes; images resized to {data['resize_size']}, "
        f"{data['crop_size']}x{data['crop_size']} crops, the {mean} subtracted, values times {data['value_scale']:g}.",
        f"- Preset: {found or 'none of the packaged presets'}; the network's options that differ from the paper's: "
        f"{', '.join(f'{k}={v}' for k, v in changed.items()) or 'none'}.",
        f"- Trained: written in epoch {record['epoch'] + 1} (counting from 1), after {record['global_step']} steps."
        if record.get("epoch") is not None else "- Trained: unknown (the record was written outside a Trainer).",
        "- Errors measured: " + (", ".join(f"{k} {v:.4f}" for k, v in sorted(errors.items())) or "none recorded")
        + " (val: centre crop; test: ten crops).",
        "- Readings: " + ", ".join(f"{CLAIMS[k]}: {v}" for k, v in record["readings"].items() if v is not None) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="alexnet-export",
        description="Export a checkpoint's network as a safetensors file (weights, mean, inference record; no code) "
                    "with a model card beside it (OUT with the suffix .md).")
    parser.add_argument("checkpoint", type=Path, help="a checkpoint (.ckpt) with an inference record")
    parser.add_argument("out", type=Path, help="the export to write, e.g. alexnet.safetensors")
    args = parser.parse_args(argv)
    try:
        card = export(args.checkpoint, args.out)
    except (UnsafeFile, ValueError, FileNotFoundError) as err:
        print(f"alexnet-export: error: {err}", file=sys.stderr)
        return 2
    print(f"Wrote {args.out} and {card}")
    return 0


def console() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    console()
