"""The registry of ablation variants: what each changes in the paper's config, and what the paper reports.

The ablation runner, the config overlays in alexnet_lightning/configs/ablations/ and the report all read this one
table.
`python -m alexnet_lightning.study.variants` rewrites the overlays and the W&B sweep file from it.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alexnet_lightning import CONFIGS


@dataclass(frozen=True)
class Variant:
    """One change from the full model.

    Args:
        name: registry key, also the overlay's file name and the W&B tag.
        flag: the ablation runner's switch that adds it (alexnet-ablate, alexnet_lightning/study/runner.py).
        change: the change, in the paper's words.
        overrides: config sections to merge into the paper's config (configs/paper.yaml), e.g.
            {"model": {"lrn": False}}.
        paper_top1: the paper's reported change of top-1 error in points (None where it gives no number).
        paper_top5: likewise for top-5.
        paper_effect: the paper's words, for the table.
    """

    name: str
    flag: str
    change: str
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    paper_top1: float | None = None
    paper_top5: float | None = None
    paper_effect: str = ""


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("baseline", "", "the full model", {}, None, None, "top-1 40.7, top-5 18.2 (ILSVRC-2012 val, 1 CNN)"),
        Variant("no_lrn", "--no-lrn", "no local response normalisation", {"model": {"lrn": False}},
                1.4, 1.2, "top-1 +1.4, top-5 +1.2"),
        Variant("no_overlap", "--no-overlap", "non-overlapping pooling (z=2, s=2)",
                {"model": {"overlapping_pool": False}}, 0.4, 0.3, "top-1 +0.4, top-5 +0.3"),
        Variant("no_split", "--no-split", "one tower with half the kernels (conv5 and FC full size)",
                {"model": {"towers": 1}}, 1.7, 1.2, "top-1 +1.7, top-5 +1.2"),
        Variant("no_pca", "--no-pca", "no PCA lighting", {"data": {"pca_lighting": False}},
                1.0, None, 'top-1 "over 1%" worse'),
        Variant("no_dropout", "--no-dropout", "no dropout", {"model": {"dropout": 0.0}},
                None, None, '"substantial overfitting"; converges in about half the iterations'),
        Variant("drop_layer", "--drop-layer", "one middle conv layer removed (conv4)",
                {"model": {"drop_layer": "conv4"}}, 2.0, None, 'top-1 "about 2%" worse'),
        Variant("tanh", "--tanh", "tanh instead of ReLU", {"model": {"activation": "tanh"}},
                None, None, "25% training error reached 6x later (4-layer CIFAR-10 net)"),
    ]
}
ABLATIONS = [name for name in VARIANTS if name != "baseline"]


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def overlay_text(variant: Variant) -> str:
    header = f"# Ablation '{variant.name}': {variant.change}. Paper: {variant.paper_effect}.\n"
    header += "# Generated from alexnet_lightning/variants.py; an overlay of the paper's config, the CLI's default:\n"
    header += f"#   alexnet-lightning fit --config {variant.name}\n"
    return header + yaml.safe_dump(variant.overrides, sort_keys=False)


def sweep_text() -> str:
    """A W&B sweep over the full grid of variants and seeds; each agent runs one cell with `alexnet-ablate`."""
    sweep = {
        "name": "alexnet-ablation",
        "program": "alexnet-ablate",
        "method": "grid",
        "metric": {"name": "test/top1_error", "goal": "minimize"},
        "parameters": {"variant": {"values": list(VARIANTS)}, "seed": {"values": [0, 1, 2]}},
        "command": ["${env}", "${program}", "--study", "sweep", "${args}"],  # the agent's ${interpreter} is `python`
    }
    header = ("# Generated from alexnet_lightning/study/variants.py. `wandb sweep` this file (docs/guide.md, "
              "Weights & Biases); `wandb agent ID`.\n")
    return header + yaml.safe_dump(sweep, sort_keys=False)


def generated_files() -> dict[Path, str]:
    files = {CONFIGS / "ablations" / f"{v.name}.yaml": overlay_text(v) for v in VARIANTS.values() if v.overrides}
    files[CONFIGS / "sweep.yaml"] = sweep_text()
    return files


if __name__ == "__main__":
    for path, text in generated_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
