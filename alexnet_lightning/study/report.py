"""The ablation report of a study folder: the rows (``summary.py``) written as ablation.md (``tables.py``), .csv and
.json, and the figures (``plots.py``).

Read by experiments/ablate.py, experiments/compare.py and notebooks/ablation_report.ipynb, which import the names
below from here.
"""

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from alexnet_lightning.files import locked, write_atomic
from alexnet_lightning.study.plots import plot, read_curves
from alexnet_lightning.study.summary import NO_OUTCOMES, load_outcomes, load_study, read_result, summarise
from alexnet_lightning.study.tables import diagnostics_markdown, to_markdown

__all__ = ["NO_OUTCOMES", "diagnostics_markdown", "load_outcomes", "load_study", "plot", "read_curves", "read_result",
           "summarise", "to_markdown", "write_report", "write_tables"]


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """ablation.md, .json and .csv, each written atomically: a reader sees the old table or the new one."""
    paths = {kind: out_dir / f"ablation.{kind}" for kind in ("md", "csv", "json")}
    finite = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
    table = io.StringIO(newline="")
    fields = list(dict.fromkeys(key for r in rows for key in r)) or ["variant"]  # the baseline has no change
    writer = csv.DictWriter(table, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    texts = {"md": to_markdown(rows), "json": json.dumps(finite, indent=2), "csv": table.getvalue()}
    for kind, text in texts.items():
        write_atomic(paths[kind], lambda f, text=text: f.write(text.encode()))
    return paths


def write_report(study_dir: Path) -> tuple[str, dict[str, Path]]:
    """Build the tables and plots of a study folder; returns the Markdown tables and the written paths.

    One process at a time, so that of cells finishing together, the report written last holds them all.
    """
    with locked(study_dir / ".report.lock"):
        results, curves = load_study(study_dir)
        rows = summarise(results, load_outcomes(study_dir, results))
        paths = write_tables(rows, study_dir)
        if rows:
            paths |= plot(rows, curves, study_dir)
        return paths["md"].read_text(), paths  # the tables once: the planner's take a second or two
