"""`alexnet-ablate --jobs N`: a study's cells side by side, N runners of the same study as child processes.

Each child (`--as-job`) goes through the study's cells in order and trains those no other process holds: the lock
per cell (cell.py) hands every cell to one child. The parent prepares the data once before they start, shows one
progress display (a line when a cell starts or is tested, and at each epoch's end a line with every running cell's
epoch and images per second; the children's full output goes to jobs/jobN.log in the study folder), and writes the
one report when all have finished. On SIGTERM it passes the signal on to every child, each of which checkpoints and
exits 143 as a study of one job does, and exits 143 itself once they all have: a rerun resumes every cell.

On a CPU a cell of the quick preset gets little from a second thread (issue 19: 7%), so the default is one
single-threaded job per core (at most one per cell), and one job with all the threads on a GPU.
"""

import argparse
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import torch

from alexnet_lightning.training.stops import Sigterm

CELL_LINE = re.compile(r"^\[(\S+) seed (\d+)\] (.*)")
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) done in .*\((\d+) img/s\)")


def default_jobs(cells: int) -> int:
    """One job per core, at most one per cell, on a CPU; one on a GPU."""
    if torch.cuda.is_available():
        return 1
    return max(1, min(cells, len(os.sched_getaffinity(0))))


def threads_per_job(jobs: int) -> int:
    """The intra-op threads of each job: the cores shared out."""
    return max(1, len(os.sched_getaffinity(0)) // jobs)


class Job:
    """One child runner: its process, the cell it trains and how far it is, its output copied to ``log``."""

    def __init__(self, number: int, command: list[str], threads: int, log: Path, lines: queue.Queue) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.number, self.cell, self.progress, self.log = number, "", "", log.open("w")
        # Its own process group: a signal the child sends its group (loader processes) stays within it.
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env, process_group=0)
        threading.Thread(target=self._read, args=(self.process.stdout, lines), daemon=True).start()

    def _read(self, stream: IO[str], lines: queue.Queue) -> None:
        for line in stream:
            lines.put((self, line.rstrip("\n")))
        lines.put((self, None))  # the child closed its output: it has exited or is about to

    def show(self, line: str) -> str | None:
        """Notes the cell and epoch a line of the child's output reports; returns what the display prints of it."""
        self.log.write(line + "\n")
        self.log.flush()
        if match := CELL_LINE.match(line):
            variant, seed, text = match.groups()
            if text.startswith(("training", "resuming")):
                self.cell, self.progress = f"{variant} seed {seed}", "starting"
            return f"[job {self.number}] {variant} seed {seed}: {text.split(';')[0]}"
        if match := EPOCH_LINE.match(line):
            self.progress = f"epoch {match[1]}/{match[2]}, {match[3]} img/s"
            return ""  # the running cells' line
        if line.startswith("test: "):
            shown = " ".join(part for part in line.split(" ") if not part.startswith("test/loss"))
            return f"[job {self.number}] {self.cell} {shown}"
        if line.startswith("Stopped by SIGTERM"):
            return f"[job {self.number}] {line}"
        return None


def run_jobs(argv: list[str], study_dir: Path, jobs: int) -> int:
    """Runs the study of ``argv`` in ``jobs`` child runners; returns 0 when every child finished its cells, 143 after
    a SIGTERM (passed on to the children), else 1."""
    threads = threads_per_job(jobs)
    command = [sys.executable, "-m", "alexnet_lightning.study.runner", *argv, "--as-job"]
    (study_dir / "jobs").mkdir(exist_ok=True)
    lines: queue.Queue = queue.Queue()
    print(f"{jobs} jobs side by side, {threads} thread(s) each; their output: {study_dir / 'jobs'}", flush=True)
    running = [Job(k + 1, command, threads, study_dir / "jobs" / f"job{k + 1}.log", lines) for k in range(jobs)]
    open_streams, signalled = len(running), False
    try:
        while open_streams:
            if Sigterm.received and not signalled:
                signalled = True
                print("SIGTERM: stopping every job (each checkpoints its cell)", file=sys.stderr, flush=True)
                for job in running:
                    if job.process.poll() is None:
                        job.process.send_signal(signal.SIGTERM)
            try:
                job, line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
                job.process.wait()
                job.cell, job.progress = "", ""
                continue
            shown = job.show(line)
            if shown == "":
                shown = time.strftime("%H:%M:%S ") + " | ".join(
                    f"{j.cell}: {j.progress}" for j in running if j.cell and j.process.poll() is None)
            if shown:
                print(shown, flush=True)
    finally:
        for job in running:  # an exception here (Ctrl-C) must not leave children training
            if job.process.poll() is None:
                job.process.send_signal(signal.SIGTERM)
            job.process.wait()
            job.log.close()
    codes = [job.process.returncode for job in running]
    failed = [job for job in running if job.process.returncode not in (0, 128 + signal.SIGTERM)]
    for job in failed:
        tail = job.log.name and Path(job.log.name).read_text().splitlines()[-20:]
        print(f"job {job.number} failed with status {job.process.returncode}; the end of {job.log.name}:\n"
              + "\n".join(tail), file=sys.stderr)
    if failed:
        return 1
    if signalled or 128 + signal.SIGTERM in codes:
        return 128 + signal.SIGTERM
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help="cells trained side by side, each in its own process (default: one "
                        "single-threaded job per core on a CPU, at most one per cell; 1 on a GPU)")
    parser.add_argument("--as-job", action="store_true", help=argparse.SUPPRESS)  # a child of --jobs
