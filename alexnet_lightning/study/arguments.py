"""The paper's ablation study as one command: `alexnet-ablate` (or `python experiments/ablate.py` in a clone).

Trains the full model (the baseline) and each requested variant under identical seeds, data and schedule, tests
each with ten crops, and prints the table beside the paper's numbers. Results go to results/<study>/ in the current
folder (--results to choose another).

    alexnet-ablate --no-lrn                       # quick preset, built-in data
    alexnet-ablate --all --seeds 3                # every ablation, three seeds
    alexnet-ablate --preset paper --data-root /data/imagenet --no-lrn --no-overlap
    alexnet-ablate --variant no_lrn --seed 1      # one cell (a cluster job or a W&B sweep agent)
    alexnet-ablate --all --seeds 3 --cell $SLURM_ARRAY_TASK_ID  # the Nth cell of the printed order (an array task)
    alexnet-ablate --no-lrn --strategy towers     # the paper's two-GPU layout, one process per tower

Re-running a study skips finished cells and resumes interrupted ones from their last checkpoint. Cells of one study
may run at the same time (a cluster array): a cell that another process is running is skipped. SIGTERM stops the
runner with status 143 after a checkpoint, or after the result of the cell it came in.

Under a multi-process strategy (--strategy towers), Lightning's launcher starts the command again for each further
process when the first one fits its first cell; only the first process decides which cells run and writes the
study's files (study.json, cell.yaml, result.json, outcomes, the report), the others train and test the cells it
names (`lead`, `follow`).
"""

import argparse
import gc
import hashlib
from pathlib import Path
from typing import Any

from alexnet_lightning import CONFIGS
from alexnet_lightning.data.sources import cache_dir
from alexnet_lightning.study import jobs
from alexnet_lightning.study.identity import PRESETS, STRATEGIES, base_configs
from alexnet_lightning.study.variants import ABLATIONS, VARIANTS, get_variant
from alexnet_lightning.training import cli as alexnet_cli
from alexnet_lightning.training.diagnostics import TRAIN_ERROR_TARGET
from alexnet_lightning.training.quiet import lightning_info_off

DEFAULT_SEEDS = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("variants (the baseline always runs)")
    for name in ABLATIONS:
        v = VARIANTS[name]
        group.add_argument(v.flag, dest="variants", action="append_const", const=name,
                           help=f"{v.change} (paper: {v.paper_effect})".replace("%", "%%"))  # argparse formats help
    group.add_argument("--all", action="store_true", help="every variant above")
    group.add_argument("--variant", dest="variants", action="append", metavar="NAME",
                       help=f"a variant by registry name, repeatable: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="run seeds 0..N-1 of every variant (default "
                        f"{DEFAULT_SEEDS}: the default study in 300 s on 2 cores; what it resolves, about 5 points "
                        "top-1 at 80%% power, is in docs/quick-preset.md; alexnet-plan says how many a change needs)")
    parser.add_argument("--seed", type=int, help="run only this seed of the named variants, no implied baseline")
    parser.add_argument("--preset", choices=PRESETS, help="quick: built-in data on CPU (default without "
                        "--data-root); paper: the paper's run on ImageNet (default with --data-root)")
    parser.add_argument("--data-root", type=Path, help="ImageNet root (ImageFolder layout or ILSVRC-2012 archives)")
    parser.add_argument("--prepared", type=Path, help="the fast path: convert --data-root into 256x256 shards in this "
                        "folder on first use and train from them (default with the paper preset: a folder under "
                        "$ALEXNET_LIGHTNING_CACHE/prepared; 'none' reads the files image by image)")
    parser.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    parser.add_argument("--study", help="name of the study folder under --results (default: the preset's name)")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="where study folders go (default: results/ in the current folder)")
    parser.add_argument("--strategy", choices=["default", *STRATEGIES], default="default",
                        help="towers: the paper's two-GPU layout, one process per tower")
    parser.add_argument("--train-error-target", type=float, default=TRAIN_ERROR_TARGET, metavar="ERROR",
                        help="the diagnostic 'epochs to this training top-1 error' (a fraction; default "
                        f"{TRAIN_ERROR_TARGET}; the paper's tanh measure is 0.25)")
    jobs.add_arguments(parser)
    parser.add_argument("--cell", type=int, metavar="N",
                        help="run only the Nth cell (from 0) of the study's order, which the runner prints: one task "
                        "of a cluster array (--cell $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--wandb-project", default="alexnet-lightning")
    parser.add_argument("--config", dest="extra_configs", action="append", type=config_file, default=[],
                        metavar="YAML", help="further config overlays for every cell (e.g. trainer settings): a file, "
                        "or a packaged config's name (e.g. gpu)")
    args = parser.parse_args(argv)
    for name in args.variants or []:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.jobs is not None and args.jobs > 1 and args.strategy != "default":
        parser.error(f"--jobs {args.jobs}: --strategy {args.strategy} trains one cell at a time on several processes")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if not 0 < args.train_error_target < 1:
        parser.error(f"--train-error-target must be a fraction between 0 and 1, got {args.train_error_target}")
    if args.data_root is not None and not args.data_root.exists():
        parser.error(f"--data-root {args.data_root} does not exist")
    if args.cell is not None and not 0 <= args.cell < len(study_cells(args)):
        parser.error(f"--cell {args.cell}: the study has {len(study_cells(args))} cell(s), numbered from 0")
    one_tower = sorted({v for v, _ in cells(args) if VARIANTS[v].overrides.get("model", {}).get("towers") == 1})
    if args.strategy == "towers" and one_tower:
        parser.error(f"--strategy towers needs two towers; {', '.join(one_tower)} has one")
    args.preset = args.preset or ("paper" if args.data_root else "quick")
    if str(args.prepared) == "none" or args.data_root and (args.data_root / "prepared.json").is_file():
        args.prepared = None  # asked for the reference path, or the root is a prepared folder already
    elif args.prepared is None and args.preset == "paper" and args.data_root:
        key = hashlib.sha1(str(args.data_root.resolve()).encode()).hexdigest()[:8]
        args.prepared = cache_dir() / "prepared" / f"{args.data_root.name}-{key}"
    args.study = args.study or args.preset
    return args


def config_file(value: str) -> Path:
    """A --config value: a file, or a packaged config's name (cli.config_file)."""
    try:
        path = Path(alexnet_cli.config_file(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value} does not exist")
    return path


def cells(args: argparse.Namespace) -> list[tuple[str, int]]:
    """The (variant, seed) pairs this run runs: the study's, or its ``--cell``."""
    every = study_cells(args)
    return every if getattr(args, "cell", None) is None else [every[args.cell]]


def study_cells(args: argparse.Namespace) -> list[tuple[str, int]]:
    """The study's (variant, seed) pairs in order, seed by seed so that each seed's comparison completes early."""
    variants = list(dict.fromkeys(ABLATIONS if args.all else (args.variants or [])))
    if args.seed is not None:
        return [(v, args.seed) for v in variants or ["baseline"]]
    variants = ["baseline", *[v for v in variants if v != "baseline"]]
    return [(v, seed) for seed in range(args.seeds) for v in variants]


def variant_configs(args: argparse.Namespace, variant: str) -> list[Path]:
    overlay = [CONFIGS / "ablations" / f"{variant}.yaml"] if get_variant(variant).overrides else []
    return base_configs(args) + overlay


def check_cells(args: argparse.Namespace) -> Any:
    """Builds each selected variant's model, data module and trainer from its configs, so that a bad value stops the
    study here, naming the option, before any data is read or generated; returns the first variant's data module."""
    settings = ["--trainer.logger", "false"]
    if args.epochs is not None:
        settings += ["--trainer.max_epochs", str(args.epochs)]
    if args.data_root:
        settings += ["--data.root", str(args.data_root)]
    data = None
    for variant in dict.fromkeys(variant for variant, _ in cells(args)):
        try:
            configs = [a for p in variant_configs(args, variant) for a in ("--config", str(p))]
            with lightning_info_off():  # "Seed set", "GPU available": the cells print them when they run
                cli = alexnet_cli.main([*configs, *settings], run=False)
        except ValueError as err:
            raise SystemExit(f"error: {err} (the configs of {variant}: "
                             f"{' '.join(str(p) for p in variant_configs(args, variant))})") from err
        data = data or cli.datamodule
        del cli
        gc.collect()  # the CLI's objects hold each other, and a whole network, in reference cycles
    return data
