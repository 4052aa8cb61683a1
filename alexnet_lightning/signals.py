"""SIGTERM, a scheduler's preemption, handled where it is safe: recorded while no trainer runs a stage (the main
process stops at its next safe point), and ignored by loader processes.

A scheduler (SLURM, Kubernetes) sends SIGTERM to every process of the job, the loader workers included. A worker that
dies of it makes the DataLoader raise "worker killed by signal" in the main process wherever that process is, even
inside the write of the checkpoint that the signal asked for. The workers ignore it: the main process decides when
to stop, and ends them.
"""

import atexit
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Sigterm:
    """SIGTERM while no trainer runs a stage, when Lightning's handler is not installed (between the cells of a
    study, while data is prepared): ``recorded()`` makes the process note the signal instead of dying wherever it
    is, and the runner stops at its next safe point with ``exit_if_received``. Lightning's handler, while installed,
    calls this one too (it keeps the handler it replaces)."""

    received = False

    @classmethod
    @contextmanager
    def recorded(cls) -> Iterator[None]:
        previous = signal.signal(signal.SIGTERM, cls._record)
        cls.received = False
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)
            cls.received = False

    @classmethod
    def _record(cls, signum: int, frame: Any) -> None:
        cls.received = True
        atexit.register(_teardown_wandb)  # runs before W&B's own exit hook, registered earlier

    @classmethod
    def exit_if_received(cls, done: str) -> None:
        """Exits with status 143 (128 + SIGTERM) if the signal came, saying what is done."""
        if cls.received:
            print(f"Stopped by SIGTERM; {done}. To go on, rerun the same command.", file=sys.stderr)
            raise SystemExit(128 + signal.SIGTERM)


def _teardown_wandb() -> None:
    """Ends W&B in a process stopped by SIGTERM. A scheduler signals W&B's service process too, which may have
    ended already: W&B's own exit hook would then print a traceback ("Connection lost"); this one, which replaces
    it, says so in a line."""
    wandb = sys.modules.get("wandb")
    if wandb is None:
        return
    try:
        wandb.teardown(128 + signal.SIGTERM)
    except (OSError, AssertionError) as err:  # ConnectionResetError: the service is gone
        print(f"W&B's service had stopped on the signal too ({type(err).__name__}): what it had not written is lost; "
              f"offline runs upload with `wandb sync`", file=sys.stderr)


def ignore_sigterm_in_worker(worker_id: int, rank: int = 0) -> None:
    """A DataLoader's ``worker_init_fn``: the worker ignores SIGTERM, and is seeded as Lightning seeds workers when
    ``seed_everything(workers=True)`` asked for it (Lightning adds its own seeding only to loaders without one)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank)
