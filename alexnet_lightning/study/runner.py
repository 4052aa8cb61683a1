"""`alexnet-ablate`: runs a study's cells, in turn or side by side (jobs.py), and writes its report (arguments.py says
what it does)."""

import os
import sys

from lightning.fabric.utilities.rank_zero import rank_zero_only

from alexnet_lightning.signals import Sigterm
from alexnet_lightning.study.arguments import cells, check_cells, parse_args, study_cells
from alexnet_lightning.study.cell import follow, lead, run_cell
from alexnet_lightning.study.identity import open_study
from alexnet_lightning.study.jobs import default_jobs, run_jobs
from alexnet_lightning.study.report import write_report
from alexnet_lightning.training.quiet import ignore_srun_hint


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    ignore_srun_hint()
    if rank_zero_only.rank != 0:
        return follow(args)
    data = None if args.as_job else check_cells(args)
    # The study's own wandb-core service: one inherited from a parent process (a notebook, a driver script, a test)
    # would outlive a cell killed by a signal and keep its run id registered, refusing the cell's resume ("run ID
    # ... is in use").
    os.environ.pop("WANDB_SERVICE", None)
    with Sigterm.recorded():  # between trainer stages, a SIGTERM waits for the next cell boundary
        study_dir, identity = open_study(args)
        todo = cells(args)
        jobs = 1 if args.as_job or args.strategy != "default" else min(args.jobs or default_jobs(len(todo)), len(todo))
        if not args.as_job:
            print(f"study {args.study} ({args.preset} preset) in {study_dir}: {len(todo)} cell(s)", flush=True)
            for index, (variant, seed) in enumerate(study_cells(args)):  # the order --cell N counts in
                print(f"  cell {index}: {variant} seed {seed}" + (" (this run)" if args.cell == index else ""))
        if jobs > 1:
            data.prepare_data()  # once, before the jobs start: the data, its statistics, its decode into memory
            Sigterm.exit_if_received("no cell has started")
            status = run_jobs(argv, study_dir, jobs)
            if status:
                Sigterm.exit_if_received("each job checkpointed its cell")
                return status
        for variant, seed in todo if jobs == 1 else []:
            if Sigterm.received:
                lead(None)
                Sigterm.exit_if_received(f"the cells before {variant} seed {seed} are finished")
            run_cell(args, study_dir, identity, variant, seed)
        lead(None)
        if args.as_job:  # the parent writes the report
            Sigterm.exit_if_received("every cell of this job is finished")
            return 0
        table, paths = write_report(study_dir)
        print("\n" + table)
        print("written: " + ", ".join(str(p) for p in paths.values()))
        Sigterm.exit_if_received("every cell is finished and the report written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
