"""The paper's ablation study as one command: `alexnet-ablate` (or `python experiments/ablate.py` in a clone).

Trains the full model (the baseline) and each requested variant under identical seeds, data and schedule, tests
each with ten crops, and prints the table beside the paper's numbers. Results go to results/<study>/ in the current
folder (--results to choose another).

    alexnet-ablate --no-lrn                       # quick preset, built-in data
    alexnet-ablate --all --seeds 3                # every ablation, three seeds
    alexnet-ablate --preset paper --data-root /data/imagenet --no-lrn --no-overlap
    alexnet-ablate --variant no_lrn --seed 1      # one cell (a cluster job or a W&B sweep agent)
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
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only

from alexnet_lightning import CONFIGS
from alexnet_lightning.data.sources import cache_dir
from alexnet_lightning.files import locked, write_atomic
from alexnet_lightning.model import outcomes
from alexnet_lightning.study.identity import PRESETS, STRATEGIES, base_configs, open_study
from alexnet_lightning.study.report import read_curves, read_result, write_report
from alexnet_lightning.study.variants import ABLATIONS, VARIANTS, get_variant
from alexnet_lightning.training import cli as alexnet_cli
from alexnet_lightning.training.checkpoints import check_writable, resume_checkpoint
from alexnet_lightning.training.diagnostics import TRAIN_ERROR_TARGET, cell_diagnostics
from alexnet_lightning.training.stops import Sigterm
from alexnet_lightning.training.wandb_logger import wandb_offline

CELL = "ALEXNET_ABLATE_CELL"  # the first process's cell, in the environment Lightning's launcher hands on


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
    parser.add_argument("--seeds", type=int, default=1, help="run seeds 0..N-1 of every variant (default 1)")
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
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if not 0 < args.train_error_target < 1:
        parser.error(f"--train-error-target must be a fraction between 0 and 1, got {args.train_error_target}")
    if args.data_root is not None and not args.data_root.exists():
        parser.error(f"--data-root {args.data_root} does not exist")
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
    """(variant, seed) pairs to run, seed by seed so that each seed's comparison completes early."""
    variants = list(dict.fromkeys(ABLATIONS if args.all else (args.variants or [])))
    if args.seed is not None:
        return [(v, args.seed) for v in variants or ["baseline"]]
    variants = ["baseline", *[v for v in variants if v != "baseline"]]
    return [(v, seed) for seed in range(args.seeds) for v in variants]


def variant_configs(args: argparse.Namespace, variant: str) -> list[Path]:
    overlay = [CONFIGS / "ablations" / f"{variant}.yaml"] if get_variant(variant).overrides else []
    return base_configs(args) + overlay


def check_cells(args: argparse.Namespace) -> None:
    """Builds each selected variant's model, data module and trainer from its configs, so that a bad value stops the
    study here, naming the option, before any data is read or generated."""
    settings = ["--trainer.logger", "false"]
    if args.epochs is not None:
        settings += ["--trainer.max_epochs", str(args.epochs)]
    if args.data_root:
        settings += ["--data.root", str(args.data_root)]
    for variant in dict.fromkeys(variant for variant, _ in cells(args)):
        try:
            alexnet_cli.main([*(a for p in variant_configs(args, variant) for a in ("--config", str(p))), *settings],
                             run=False)
        except ValueError as err:
            raise SystemExit(f"error: {err} (the configs of {variant}: "
                             f"{' '.join(str(p) for p in variant_configs(args, variant))})") from err
        gc.collect()  # the CLI's objects hold each other, and a whole network, in reference cycles


def cell_config(args: argparse.Namespace, cell_dir: Path, variant: str, seed: int, attempt: int) -> dict:
    """The settings of one cell on top of the preset and the variant's overlay: seed, data, loggers."""
    config: dict[str, Any] = {
        "seed_everything": seed,
        "trainer": {
            "default_root_dir": str(cell_dir),
            "logger": [
                {"class_path": "lightning.pytorch.loggers.CSVLogger",
                 "init_args": {"save_dir": str(cell_dir), "name": "csv", "version": f"attempt{attempt:02d}"}},
                {"class_path": "alexnet_lightning.training.wandb_logger.FallbackWandbLogger",
                 "init_args": {"project": args.wandb_project, "group": args.study, "name": f"{variant}-seed{seed}",
                               "tags": [variant, args.preset], "job_type": "ablation", "save_dir": str(cell_dir),
                               "offline": wandb_offline(), "id": run_id(args.study, variant, seed),
                               "resume": "allow"}},
            ],
        },
        "data": {"root": str(args.data_root) if args.data_root else None,
                 "prepared": str(args.prepared) if args.prepared else None},
    }
    if args.epochs is not None:
        config["trainer"]["max_epochs"] = args.epochs
    return config


def run_id(study: str, variant: str, seed: int) -> str:
    return hashlib.sha1(f"{study}/{variant}/{seed}".encode()).hexdigest()[:12]


def run_cell(args: argparse.Namespace, study_dir: Path, identity: dict[str, Any], variant: str, seed: int) -> None:
    cell_dir = study_dir / "runs" / variant / f"seed{seed}"
    with locked(cell_dir / ".cell.lock", wait=False) as mine:
        if not mine:
            print(f"[{variant} seed {seed}] running in another process: skipped")
            return
        if (cell_dir / "result.json").exists():
            try:
                read_result(cell_dir / "result.json")
            except ValueError as err:
                print(f"[{variant} seed {seed}] {err}: the cell runs again")
            else:
                print(f"[{variant} seed {seed}] finished earlier: skipped")
                return
        last = resume_checkpoint(cell_dir / "checkpoints")
        attempt = len(list((cell_dir / "csv").glob("attempt*")))
        cell_file = cell_dir / "cell.yaml"
        cell_file.write_text(yaml.safe_dump(cell_config(args, cell_dir, variant, seed, attempt), sort_keys=False))
        print(f"[{variant} seed {seed}] {'resuming from ' + str(last) if last else 'training'}; configs: "
              + " ".join(str(p) for p in [*variant_configs(args, variant), cell_file]))
        lead({"variant": variant, "seed": seed, "last": str(last) if last else None})
        train_cell(args, cell_dir, identity, variant, seed, last)


def train_cell(args: argparse.Namespace, cell_dir: Path, identity: dict[str, Any], variant: str, seed: int,
               last: Path | None) -> None:
    """Trains the cell from its cell.yaml (resumed from `last`), validates and tests it, and writes its result. The
    further processes of a multi-process strategy (`follow`) train and test, and write nothing (`identity` unused)."""
    first = rank_zero_only.rank == 0
    configs = [*variant_configs(args, variant), cell_dir / "cell.yaml"]
    cli = alexnet_cli.main([a for p in configs for a in ("--config", str(p))], run=False)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    for callback in trainer.checkpoint_callbacks:  # one checkpoint folder per cell, whatever the logger versions
        callback.dirpath = str(cell_dir / "checkpoints")
    wandb_logger = trainer.loggers[1]
    if first:
        wandb_logger.experiment.config.update(
            {"resolved_config": cli.config.as_dict(), "variant": variant, "seed": seed, "study": args.study,
             "code_version": identity["code_version"], "data_fingerprint": identity["data_fingerprint"]},
            allow_val_change=True,
        )
    check_writable(trainer)
    trainer.fit(model, data, ckpt_path=str(last) if last else None)  # SIGTERM: exits 143, see reliability
    validated = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not validated:  # the fit had ended in an earlier run, which stopped before the cell's result was written
        loggers, trainer.loggers = trainer.loggers, []  # not a point of the learning curves
        validated = {k: v for k, v in trainer.validate(model, data)[0].items() if k.startswith("val/")}
        trainer.loggers = loggers
    diagnosed = diagnose(cell_dir, trainer, args.train_error_target) if first else {}
    tested = trainer.test(model, data)[0]
    if not first:
        return
    keep_outcomes(cell_dir, trainer, model, data)
    result = {"variant": variant, "seed": seed, "epochs": trainer.current_epoch, **validated, **tested, **diagnosed,
              "code_version": identity["code_version"], "wandb_run_id": wandb_logger.version}
    wandb_logger.experiment.finish()
    # A cell counts as finished only once its result is whole.
    write_atomic(cell_dir / "result.json", lambda f: f.write(json.dumps(result, indent=2).encode()))


def diagnose(cell_dir: Path, trainer: Any, target: float) -> dict[str, Any]:
    """The cell's diagnostics (diagnostics.py) from its training and its curves over all attempts, logged to the
    CSV and W&B loggers (the test that follows writes them out)."""
    diagnosed = cell_diagnostics(trainer, read_curves(sorted(cell_dir.glob("csv/attempt*/metrics.csv"))), target)
    for logger in trainer.loggers:
        logger.log_metrics({k: float(v) for k, v in diagnosed.items() if v is not None}, step=trainer.global_step)
    return diagnosed


def keep_outcomes(cell_dir: Path, trainer: Any, model: Any, data: Any) -> None:
    """The per-image outcomes of the cell's test beside its result (outcomes.py)."""
    if model.test_outcomes is None:
        return
    replicas = (getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}).get("num_replicas", 1)
    outcomes.write(cell_dir / outcomes.FILE, model.test_outcomes, outcomes.test_set_fingerprint(data.test_set),
                   len(data.test_set), replicas)


def lead(cell: dict[str, Any] | None) -> None:
    """Names the cell that this, the first, process trains next (None: no more) to the further processes of a
    multi-process strategy: in the environment, which Lightning's launcher hands on when the first fit starts them,
    and by broadcast once they run. Without such processes, the variable is unread."""
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list([cell], src=0)
    elif cell is not None:
        os.environ[CELL] = json.dumps(cell)


def follow(args: argparse.Namespace) -> int:
    """A further process of a multi-process strategy, started by Lightning's launcher: trains and tests, in step
    with the first process, the cells that it names (`lead`), and writes nothing of the study."""
    if CELL not in os.environ:
        raise SystemExit(f"error: this process has rank {rank_zero_only.rank} but was not started by the study's "
                         "first process: run the study as one command, whose launcher starts the others")
    cell = json.loads(os.environ[CELL])
    with Sigterm.recorded():  # between cells, the first process decides when to stop
        while cell is not None:
            cell_dir = args.results / args.study / "runs" / cell["variant"] / f"seed{cell['seed']}"
            train_cell(args, cell_dir, {}, cell["variant"], cell["seed"], Path(cell["last"]) if cell["last"] else None)
            named: list[dict[str, Any] | None] = [None]
            dist.broadcast_object_list(named, src=0)
            cell = named[0]
    return 0


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
