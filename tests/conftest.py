from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def paper_optimisation() -> dict:
    """The model section of configs/paper.yaml: the paper's optimisation hyper-parameters."""
    return yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())["model"]
