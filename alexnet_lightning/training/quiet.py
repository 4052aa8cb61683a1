"""Library messages that say nothing about the user's run, filtered where they arise: each by its text and the
module that issues it, so that every other warning (about the run, or new in a library) still shows."""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (the message's start, as a regular expression; the module that issues it)
LIBRARY_WARNINGS = [
    # Lightning 2.6 calls a torch API that torch >= 2.10 deprecates; nothing the user can change
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree"),
    # Lightning's note, for a trainer without a logger (`alexnet-lightning fit`), that TensorBoard is not installed
    (r"Starting from v1\.9\.0, `tensorboardX` has been removed",
     r"lightning\.pytorch\.trainer\.connectors\.logger_connector\.logger_connector"),
]
ARGS_WARNING = (r"LightningCLI's args parameter is intended", r"lightning\.pytorch\.cli")
SRUN_HINT = (r"The `srun` command is available on your system but is not used",
             r"lightning\.fabric\.plugins\.environments\.slurm")
# (logger, the message's start): Lightning's advertisement, logged for every trainer without its own logger class
LIBRARY_LOGS = [("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging")]


class _Drop(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_libraries() -> None:
    """Filters the library messages above (idempotent: a filter added twice is kept once)."""
    for message, module in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    for name, start in LIBRARY_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.start == start for f in logger.filters):
            logger.addFilter(_Drop(start))


def ignore_args_warning() -> None:
    """LightningCLI warns of `args` given beside a command line, as when `alexnet-ablate` hands each cell's
    arguments to the CLI: `main(args)` uses `args` in place of the command line by design."""
    warnings.filterwarnings("ignore", message=ARGS_WARNING[0], module=ARGS_WARNING[1])


def ignore_srun_hint() -> None:
    """Where SLURM's `srun` is installed, Lightning tells a process that srun did not start to prepend `srun`. The
    study's cells are processes that the runner starts itself, or one per task of an array (docs/cluster.md), where
    Lightning finds the task's SLURM variables and gives no hint: on a login node it would be printed for every cell,
    and the command it suggests would be wrong."""
    warnings.filterwarnings("ignore", message=SRUN_HINT[0], module=SRUN_HINT[1])


@contextmanager
def lightning_info_off() -> Iterator[None]:
    """Lightning's INFO lines (the seed set, the accelerators found) off, warnings still on: while the study builds
    each variant's CLI only to check its configs, they would be printed once per variant before anything runs."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
