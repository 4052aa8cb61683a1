"""`alexnet-ablate`: runs a study's cells in turn and writes its report (arguments.py says what it does)."""

import os
import sys

from lightning.fabric.utilities.rank_zero import rank_zero_only

from alexnet_lightning.signals import Sigterm
from alexnet_lightning.study.arguments import cells, check_cells, parse_args, study_cells
from alexnet_lightning.study.cell import follow, lead, run_cell
from alexnet_lightning.study.identity import open_study
from alexnet_lightning.study.report import write_report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if rank_zero_only.rank != 0:
        return follow(args)
    check_cells(args)
    # The study's own wandb-core service: one inherited from a parent process (a notebook, a driver script, a test)
    # would outlive a cell killed by a signal and keep its run id registered, refusing the cell's resume ("run ID
    # ... is in use").
    os.environ.pop("WANDB_SERVICE", None)
    with Sigterm.recorded():  # between trainer stages, a SIGTERM waits for the next cell boundary
        study_dir, identity = open_study(args)
        todo = cells(args)
        print(f"study {args.study} ({args.preset} preset) in {study_dir}: {len(todo)} cell(s)")
        for index, (variant, seed) in enumerate(study_cells(args)):  # the order --cell N counts in
            print(f"  cell {index}: {variant} seed {seed}" + (" (this run)" if args.cell == index else ""))
        for variant, seed in todo:
            if Sigterm.received:
                lead(None)
                Sigterm.exit_if_received(f"the cells before {variant} seed {seed} are finished")
            run_cell(args, study_dir, identity, variant, seed)
        lead(None)
        table, paths = write_report(study_dir)
        print("\n" + table)
        print("written: " + ", ".join(str(p) for p in paths.values()))
        Sigterm.exit_if_received("every cell is finished and the report written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
