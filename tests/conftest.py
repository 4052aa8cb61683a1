import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from alexnet_lightning import CONFIGS
from tests.archives import StandIn, checksums, write_archives

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest's own TOML reader before Python 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
# The compiler's cache of its own for the test run: a cache in /tmp that a killed compile left half-written fails
# every later compile of the same graph ("file too short"), in any run on the machine.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="alexnet-tests-inductor-"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture
def paper_optimisation() -> dict:
    """The model section of the packaged configs/paper.yaml: the paper's optimisation hyper-parameters."""
    return yaml.safe_load((CONFIGS / "paper.yaml").read_text())["model"]


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory) -> Path:
    """A reduced built-in dataset (10 of its classes, 6 train and 3 val images each) in the ImageFolder layout."""
    from alexnet_lightning.data import standin

    root = tmp_path_factory.mktemp("tiny") / "data"
    standin.generate(root, seed=0, train_per_class=6, val_per_class=3, classes=standin.CLASSES[:10])
    return root


@pytest.fixture
def imagenet_archives(tmp_path, monkeypatch) -> StandIn:
    """A small stand-in for the official ILSVRC-2012 archives (``tests/archives.py``: 4 classes, 5 training images
    each, 8 validation images) in a fresh folder, whose MD5 sums torchvision accepts during the test.

    torchvision refuses archives whose MD5 sums are not the official ones, which no small stand-in can match. The
    test replaces torchvision's table of expected sums (``imagenet.ARCHIVE_META``) with the stand-in's own sums, for
    the test only: the check itself still runs on every archive, and the product code never changes it
    (tests/test_archives.py checks that the official table rejects the stand-in).
    """
    from torchvision.datasets import imagenet

    stand_in = write_archives(tmp_path / "archives")
    monkeypatch.setattr(imagenet, "ARCHIVE_META", checksums(stand_in.root))
    return stand_in


@pytest.fixture
def tiny_overlay(tmp_path) -> Path:
    """Trainer and data settings that make a run of the quick preset take seconds."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
        # 15 divides the 60 training images: training drops a last partial batch, and 4 steps an epoch stay 4.
        "data": {"batch_size": 15, "num_workers": 0, "statistics_images": 32},
    }))
    return path


@pytest.fixture
def study_args(tiny_imagefolder, tiny_overlay, tmp_path, monkeypatch):
    """The runner's arguments for a tiny study on the tiny data, W&B offline, its cells in the test's own process
    (``--jobs 1``: a later ``--jobs`` overrides it)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return ["--data-root", str(tiny_imagefolder), "--preset", "quick", "--config", str(tiny_overlay),
            "--results", str(tmp_path / "results"), "--study", "tiny", "--jobs", "1", "--seeds", "1"]


@pytest.fixture
def no_data_reads(monkeypatch):
    """Fails the test if the data module reads data (prepares, sets up, computes statistics or generates the set)."""
    from alexnet_lightning.data import standin
    from alexnet_lightning.data.datamodule import ImageNetDataModule

    def read(*args, **kwargs):
        raise AssertionError("data was read")

    for name in ("prepare_data", "setup", "statistics"):
        monkeypatch.setattr(ImageNetDataModule, name, read)
    monkeypatch.setattr(standin, "ensure", read)


@pytest.fixture(autouse=True)
def restore_deterministic_algorithms():
    """Lightning's deterministic mode leaves torch on deterministic algorithms for the rest of the process; later
    tests must not inherit it."""
    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)
