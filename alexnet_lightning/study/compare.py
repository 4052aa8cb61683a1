"""`alexnet-compare`: a study's ablation table, rebuilt from its folder or from its W&B runs.

    alexnet-compare --study quick                  # the study folder results/quick, else W&B when online
    alexnet-compare --study quick --source wandb   # the W&B runs whose group is the study, from any machine

The folder holds each cell's result.json and per-image test outcomes (runs/<variant>/seed<k>/outcomes.npz), which
the intervals and verdicts need. W&B holds only each run's summary numbers: from W&B alone the table gives each
change as the mean of its per-seed error differences, with no interval, and says so; with the study folder under
--results as well, the outcome files give the intervals.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

from alexnet_lightning.study.report import load_outcomes, load_study, summarise, to_markdown
from alexnet_lightning.training.wandb_logger import wandb_offline

KEPT = ("test/top1_error", "test/top5_error", "diag/")  # what a run's W&B summary gives the table


def wandb_runs(project: str, study: str) -> list[dict[str, Any]]:
    """The finished runs of a study in a W&B project (wandb's public API), as the cells' results."""
    import wandb

    results = []
    for run in wandb.Api(timeout=30).runs(project, filters={"group": study}):
        if run.state == "finished" and "test/top1_error" in run.summary:
            summary = {k: run.summary[k] for k in run.summary.keys() if k.startswith(KEPT)}
            results.append({"variant": run.config["variant"], "seed": run.config["seed"], **summary})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alexnet-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True)
    parser.add_argument("--source", choices=["auto", "local", "wandb"], default="auto",
                        help="local: the study folder; wandb: the W&B API; auto (default): the folder if it is "
                        "there, else W&B")
    parser.add_argument("--project", default="alexnet-lightning", help="W&B project, or ENTITY/PROJECT")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="where study folders are (default: results/ in the current folder, as alexnet-ablate)")
    args = parser.parse_args(argv)
    study_dir = args.results / args.study
    source = args.source
    if source == "auto":
        source = "local" if study_dir.is_dir() or wandb_offline() else "wandb"
    if source == "local" and not study_dir.is_dir():
        parser.error(f"no study folder {study_dir} (--results names where study folders are)")
    if source == "wandb":
        try:
            results = wandb_runs(args.project, args.study)
        except Exception as err:  # wandb raises CommError, UsageError, ValueError (a project it cannot find), ...
            print(f"alexnet-compare: error: W&B project {args.project!r} could not be read ({type(err).__name__}: "
                  f"{err}); --source local reads the study folder", file=sys.stderr)
            return 1
    else:
        results = load_study(study_dir)[0]
    if not results:
        print(f"no finished runs of study {args.study!r} ({source})", file=sys.stderr)
        return 1
    outcomes = load_outcomes(study_dir, results) if study_dir.is_dir() else {}
    print(f"{len(results)} finished run(s) of study {args.study!r} from {source}\n")
    if not outcomes:
        print(f"No per-image outcome files in {study_dir} (W&B holds only each run's summary numbers): the table "
              "has no intervals or verdicts. Run this where the study folder is, or point --results at a copy.\n")
    print(to_markdown(summarise(results, outcomes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
