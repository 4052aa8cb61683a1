"""The towers' process launcher: Lightning's, except that a rank stopping on SIGTERM does not get the first process
killed before that one's own orderly stop.

Lightning's launcher watches the processes it started and SIGKILLs all of them, the first included, as soon as one
exits with a non-zero status (a hung collective would otherwise never end). Under a scheduler's preemption every rank
gets SIGTERM and stops with status 143 after the checkpoint they write together; the second rank is done as soon as
its share is sent, while the first still writes the file, closes its loggers and prints how to resume. Killed then,
the first process exits -9, its log ends mid-sentence and its last writes are lost.
"""

import logging
import os
import signal
import time
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

log = logging.getLogger(__name__)
SIGTERM_EXITS = (128 + signal.SIGTERM, -signal.SIGTERM)  # stopped on SIGTERM: by our handler, or by the signal


class PatientObserver(_ChildProcessObserver):
    """Lightning's watcher, which waits up to ``grace_s`` for the first process to end by itself while the other
    ranks have stopped on SIGTERM; any other failure (or the grace period spent) kills all, as Lightning does."""

    def __init__(self, main_pid: int, child_processes: list, grace_s: float) -> None:
        super().__init__(main_pid, child_processes, sleep_period=1)
        self.grace_s = grace_s
        self._stopping_since: float | None = None

    def _run(self) -> bool:
        codes = [proc.poll() for proc in self._child_processes]
        failed = [code for code in codes if code]
        if failed and all(code in SIGTERM_EXITS for code in failed):
            if self._stopping_since is None:
                self._stopping_since = time.monotonic()
                log.info("A rank stopped on SIGTERM: waiting up to %.0f s for rank 0's own stop", self.grace_s)
            if time.monotonic() - self._stopping_since < self.grace_s:
                return False
        return super()._run()


class PatientLauncher(_SubprocessScriptLauncher):
    """Lightning's launcher of one process per device (``start_method="popen"``), watched by ``PatientObserver``."""

    def __init__(self, *args: Any, grace_s: float = 120.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grace_s = grace_s

    def kill(self, signum: Any) -> None:
        # Lightning's SIGTERM handler forwards the signal to the other ranks and broadcasts from rank 0 in every rank
        # that receives it. A scheduler signals every process already: forwarded, rank 1 would get it twice and run
        # a second broadcast that rank 0 never matches, a deadlock (seen under a process-group SIGTERM). A SIGTERM to
        # rank 0 alone reaches the others through that broadcast.
        if signum != signal.SIGTERM:
            super().kill(signum)

    def launch(self, function: Any, *args: Any, trainer: "pl.Trainer | None" = None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            PatientObserver(os.getpid(), self.procs, self.grace_s).start()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)
