"""SIGTERM to the whole process group of `python -m alexnet_lightning.data prepare` (its loader processes included,
as a scheduler sends it) stops it after the shard being written, with status 143 and a message saying what is done
and that a rerun resumes; the rerun completes the shards."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from alexnet_lightning.data import shards
from tests.conftest import REPO

# Each shard's files are written a little slowly, so that the signal comes while shards remain.
SLOW_PREPARE = """
import sys, time
from alexnet_lightning.data import shards
write = shards.write_atomic
shards.write_atomic = lambda *args, **kwargs: (time.sleep(0.05), write(*args, **kwargs))
from alexnet_lightning.data.__main__ import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigterm_to_the_process_group_stops_prepare_with_143_and_a_rerun_resumes(tiny_imagefolder, tmp_path):
    dest = tmp_path / "prepared"
    args = ["prepare", str(tiny_imagefolder), str(dest), "--size", "72", "--shard-size", "1", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(dest.glob("train/*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGTERM)  # the main process and its loader processes
        _, err = run.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Stopped by SIGTERM" in err and "shard by shard" in err and "rerun the same command" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    written = len(list(dest.glob("train/*.json")))
    assert 0 < written < 60 and not (dest / "prepared.json").exists()

    rerun = subprocess.run([sys.executable, "-m", "alexnet_lightning.data", *args], env=env, capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    meta = shards.read_meta(dest)
    assert meta["splits"]["train"]["images"] == 60 and meta["splits"]["val"]["images"] == 30
