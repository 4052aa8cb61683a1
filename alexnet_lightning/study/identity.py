"""A study's identity, recorded in study.json: what makes two runs of a study comparable."""

import argparse
import hashlib
import json
import os
import subprocess
import tempfile
from argparse import ArgumentError
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from alexnet_lightning import CONFIGS, current_name
from alexnet_lightning.data import standin
from alexnet_lightning.files import write_atomic
from alexnet_lightning.model.module import LEGACY_READINGS, readings
from alexnet_lightning.training.cli import resolved_config

PRESETS = {
    "quick": [CONFIGS / "paper.yaml", CONFIGS / "presets" / "quick.yaml"],  # CPU minutes on the built-in data
    "paper": [CONFIGS / "paper.yaml"],  # the paper's run, for ImageNet
}
STRATEGIES = {"towers": CONFIGS / "strategy" / "towers.yaml"}

def base_configs(args: argparse.Namespace) -> list[Path]:
    paths = list(PRESETS[args.preset]) + args.extra_configs
    if args.strategy != "default":
        paths.append(STRATEGIES[args.strategy])
    return paths


def data_fingerprint(root: Path | None) -> str:
    """A hash of the relative paths and sizes of the data files: two studies on the same data agree. The
    statistics cached beside the data on first use (alexnet_stats_*.pt) are derived from it and left out."""
    if root is None:
        root = standin.ensure()
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(n for n in filenames if not n.startswith(("alexnet_stats_", ".alexnet_stats_"))):
            path = Path(dirpath, name)
            digest.update(f"{path.relative_to(root)}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def code_version() -> str:
    """The commit of the clone the package runs from, else the installed package's version."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        try:
            return f"alexnet-lightning {version('alexnet-lightning')}"
        except PackageNotFoundError:
            return "unknown"


def study_identity(args: argparse.Namespace) -> dict[str, Any]:
    """What makes two runs of a study comparable: the base config as the CLI resolves it, the readings of LRN and
    PCA lighting (module.READINGS: a study from before they were recorded computed the printed formulas), the epochs
    and the data."""
    config = resolved_config(base_configs(args))
    return {
        "preset": args.preset,
        "base_config": config,
        "readings": readings(config.get("model") or {}, config.get("data") or {}),
        "epochs": args.epochs if args.epochs is not None else config.get("trainer", {}).get("max_epochs"),
        "data_root": str(args.data_root.resolve()) if args.data_root else None,
        "data_fingerprint": data_fingerprint(args.data_root),
    }


def resolve_recorded(study_file: Path, config: dict[str, Any]) -> dict[str, Any]:
    """A recorded base config as the CLI resolves it today, to compare with this run's: a study.json written before
    the CLI resolved it holds the merge of its files, which the CLI may resolve to the same config."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "recorded.yaml")
        path.write_text(yaml.safe_dump(config))
        try:
            return resolved_config([path])
        except ArgumentError as err:
            raise SystemExit(f"error: the config recorded in {study_file} is not one this version reads ({err}). Use "
                             f"--study with a new name.") from None


def read_study(study_file: Path, keys: set[str]) -> dict[str, Any]:
    """A study's recorded identity; a damaged file stops the study with an error that names it."""
    try:
        # class paths of the flat layout (before the package was grouped) read as their modules' new names
        recorded = json.loads(study_file.read_text(), object_hook=lambda d: d | (
            {"class_path": current_name(d["class_path"])} if isinstance(d.get("class_path"), str) else {}))
        if isinstance(recorded, dict):  # written before the readings were recorded: the printed formulas
            recorded.setdefault("readings", LEGACY_READINGS)
        missing = keys - set(recorded) if isinstance(recorded, dict) else keys
        if missing:
            raise ValueError(f"it lacks {', '.join(sorted(missing))}")
        if recorded["epochs"] is None:  # written before the epochs were resolved: the base config's
            recorded["epochs"] = recorded["base_config"].get("trainer", {}).get("max_epochs")
    except (OSError, ValueError, AttributeError) as err:
        raise SystemExit(
            f"error: the study file {study_file} is damaged ({err}). It records the config, epochs and data the "
            f"study's cells were trained with: restore it, or use --study with a new name. Removing it makes this "
            f"run's config the study's, which is right only if its finished cells were trained with it."
        ) from err
    return recorded


def open_study(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The study folder; refuses one written by a different config, before any training. The study file is created
    whole or not at all, once: of cells of a new study started together, one writes it and the others compare."""
    study_dir = args.results / args.study
    identity = study_identity(args)
    study_file = study_dir / "study.json"
    try:
        write_atomic(study_file, lambda f: f.write(json.dumps(identity, indent=2).encode()), "study file",
                     exclusive=True)
    except FileExistsError:
        recorded = read_study(study_file, set(identity))
        recorded["base_config"] = resolve_recorded(study_file, recorded["base_config"])
        changed = sorted(k for k in identity if recorded[k] != identity[k])
        if changed:
            why = ""
            if "readings" in changed:
                why = (f" Its LRN and PCA lighting were computed with {recorded['readings']}, this version computes "
                       f"{identity['readings']} (docs/paper.md#cuda-convnet2): their results must not be mixed.")
            raise SystemExit(
                f"error: {study_dir} was written by a different config (differs in: {', '.join(changed)}).{why} "
                f"Use --study with a new name, or remove {study_dir}."
            ) from None
    return study_dir, identity | {"code_version": code_version()}
