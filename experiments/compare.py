"""Build the ablation table of a study from its W&B runs.

    python experiments/compare.py --study quick                  # W&B API when online, local runs otherwise
    python experiments/compare.py --study quick --source local   # the offline W&B runs under results/quick

Online, the runs are those of the W&B project whose group is the study (as alexnet-ablate logs them, from
any number of machines). Offline, they are read back from the offline W&B run files in the study folder (or from
the cells' result.json files when there are none).

The intervals and verdicts need each cell's per-image test outcomes (runs/<variant>/seed<k>/outcomes.npz), which
W&B does not hold: they are read from the study folder under --results when it is there. Without them the table
gives each change as the mean of its per-seed error differences, with no interval, and says so.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

from alexnet_lightning.study.report import load_outcomes, load_study, summarise, to_markdown
from alexnet_lightning.training.wandb_logger import read_offline_run, wandb_offline


def kept(metrics: Any) -> dict[str, Any]:
    """The test errors and the diagnostics (diag/...) of a run's logged metrics."""
    return {k: metrics[k] for k in metrics.keys() if k.startswith(("test/top1_error", "test/top5_error", "diag/"))}


def wandb_api_runs(project: str, study: str) -> list[dict[str, Any]]:
    import wandb

    results = []
    for run in wandb.Api(timeout=30).runs(project, filters={"group": study}):
        if run.state == "finished" and "test/top1_error" in run.summary:
            results.append({"variant": run.config["variant"], "seed": run.config["seed"], **kept(run.summary)})
    return results


def offline_runs(study_dir: Path) -> list[dict[str, Any]]:
    """Finished cells of a study, read back from their (latest) offline W&B run files."""
    results = []
    for cell in sorted(study_dir.glob("runs/*/seed*")):
        run_files = sorted(cell.glob("wandb/offline-run-*/run-*.wandb"))
        if not run_files:
            continue
        config, metrics = read_offline_run(run_files[-1])
        if "test/top1_error" in metrics:
            results.append({"variant": config["variant"], "seed": config["seed"], **kept(metrics)})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True)
    parser.add_argument("--source", choices=["auto", "wandb", "local"], default="auto")
    parser.add_argument("--project", default="alexnet-lightning", help="W&B project, or ENTITY/PROJECT")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="where study folders are (default: results/ in the current folder, as alexnet-ablate)")
    args = parser.parse_args(argv)
    source = args.source if args.source != "auto" else ("local" if wandb_offline() else "wandb")
    study_dir = args.results / args.study
    if source == "wandb":
        results = wandb_api_runs(args.project, args.study)
    else:
        if not study_dir.is_dir():
            parser.error(f"no study folder {study_dir}")
        results = offline_runs(study_dir) or load_study(study_dir)[0]
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
