"""The study's lock holds among processes of one machine and across nodes of a shared filesystem (a lock file made
with O_EXCL, not an flock), and a lock whose holder died is broken: at once on its host, after an age elsewhere."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from alexnet_lightning.files import locked
from tests.conftest import REPO

HOLD = """
import sys, time
from pathlib import Path
from alexnet_lightning.files import locked
with locked(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold(path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_process_does_not_get_the_lock_until_the_first_releases_it(tmp_path):
    lock = tmp_path / ".cell.lock"
    holder = hold(lock, 3)
    with locked(lock, wait=False) as mine:
        assert not mine
    assert json.loads(lock.read_text())["pid"] == holder.pid
    start = time.monotonic()
    with locked(lock) as mine:  # waits for the holder's release
        assert mine and json.loads(lock.read_text())["pid"] == os.getpid()
    assert time.monotonic() - start > 0.5 and holder.wait(timeout=30) == 0
    assert not lock.exists()  # released


def test_a_lock_left_by_a_killed_process_on_this_host_is_broken_at_once(tmp_path):
    lock = tmp_path / ".cell.lock"
    holder = hold(lock, 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert lock.exists()  # no release ran
    with pytest.warns(UserWarning, match=f"Breaking the stale lock .*process {holder.pid} on this host"):
        with locked(lock, wait=False) as mine:
            assert mine


def test_a_lock_of_another_host_is_broken_only_when_it_was_not_refreshed_for_the_age_limit(tmp_path):
    lock = tmp_path / ".cell.lock"
    lock.write_text(json.dumps({"host": f"not-{socket.gethostname()}", "pid": 1, "time": time.time()}))
    with locked(lock, wait=False, stale_s=60) as mine:
        assert not mine  # its holder may be alive on its node
    old = time.time() - 120
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match="Breaking the stale lock .*not refreshed for 1[12]\\d s"):
        with locked(lock, wait=False, stale_s=60) as mine:
            assert mine


def test_a_held_lock_is_refreshed_so_that_other_nodes_do_not_take_it_for_stale(tmp_path):
    lock = tmp_path / ".cell.lock"
    with locked(lock, stale_s=1.0):
        old = time.time() - 100
        os.utime(lock, (old, old))
        time.sleep(0.5)
        assert time.time() - lock.stat().st_mtime < 1.0
