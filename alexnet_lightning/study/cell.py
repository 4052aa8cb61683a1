"""One cell of a study (a variant at a seed): its config, its training and ten-crop test, its result.json and
per-image outcomes."""

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only

from alexnet_lightning.files import locked, write_atomic
from alexnet_lightning.model import outcomes
from alexnet_lightning.signals import Sigterm
from alexnet_lightning.study.arguments import variant_configs
from alexnet_lightning.study.report import read_curves, read_result
from alexnet_lightning.training import cli as alexnet_cli
from alexnet_lightning.training.checkpoints import check_writable, resume_checkpoint
from alexnet_lightning.training.diagnostics import cell_diagnostics
from alexnet_lightning.training.wandb_logger import wandb_offline

CELL = "ALEXNET_ABLATE_CELL"  # the first process's cell, in the environment Lightning's launcher hands on


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
    # The cells share one process: without a reset, dynamo's cache fills with earlier cells' graphs (and their CUDA
    # graphs' memory) until its recompile limit, after which later cells run eager, silently.
    torch.compiler.reset()
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
    tested = trainer.test(model, data, verbose=False)[0]  # its figures go to the result and the table
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
