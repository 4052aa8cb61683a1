"""A paper-faithful AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) in PyTorch Lightning."""

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from alexnet_lightning.model.network import AlexNet, LocalResponseNorm, local_response_norm

# The packaged configs: paper.yaml (the paper's run), gpu.yaml, presets/, ablations/, strategy/ and the W&B sweep.
CONFIGS = Path(__file__).resolve().parent / "configs"

# Where each module of the flat layout (before the package was grouped) lives now: the class paths in configs and
# study.json files written then (e.g. alexnet_lightning.reliability.LastCheckpoint) still import.
MOVED = {
    "alexnet_lightning.network": "alexnet_lightning.model.network",
    "alexnet_lightning.module": "alexnet_lightning.model.module",
    "alexnet_lightning.strategy": "alexnet_lightning.model.towers",
    "alexnet_lightning.outcomes": "alexnet_lightning.model.outcomes",
    "alexnet_lightning.cli": "alexnet_lightning.training.cli",
    "alexnet_lightning.reliability": "alexnet_lightning.training.checkpoints",
    "alexnet_lightning.diagnostics": "alexnet_lightning.training.diagnostics",
    "alexnet_lightning.tracking": "alexnet_lightning.training.wandb_logger",
    "alexnet_lightning.ablate": "alexnet_lightning.study.runner",
    "alexnet_lightning.report": "alexnet_lightning.study.report",
    "alexnet_lightning.inference": "alexnet_lightning.study.significance",
    "alexnet_lightning.variants": "alexnet_lightning.study.variants",
    "alexnet_lightning.data.builtin": "alexnet_lightning.data.standin",
    "alexnet_lightning.data.prepared": "alexnet_lightning.data.shards",
}


def current_name(dotted: str) -> str:
    """A dotted name of the flat layout (a module, or a class in one) as it is called now."""
    for old, new in MOVED.items():
        if dotted == old or dotted.startswith(old + "."):
            return new + dotted[len(old):]
    return dotted


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a moved module's old name as its new module."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        pass


sys.meta_path.append(_MovedModules())

__all__ = ["CONFIGS", "AlexNet", "LocalResponseNorm", "local_response_norm", "current_name"]
