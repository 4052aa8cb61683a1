"""Files written whole or not at all, and a lock among processes that share a folder, on one node or several."""

import contextlib
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, write: Callable[[BinaryIO], object], what: str = "file", exclusive: bool = False) -> None:
    """Calls ``write(file)`` on a hidden temporary file beside ``path``, fsyncs it and renames it over ``path``, so
    that a full disk, a crash or a kill while writing leaves the previous file whole, and a reader sees the old file
    or the new one, never part of one. An OSError names the path.

    ``exclusive``: creates ``path`` only if there is none, else raises FileExistsError; of several processes that
    create it at once, one wins.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hidden: never taken for the file itself
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if exclusive:
            os.link(tmp, path)  # unlike a rename, fails if the path exists
            tmp.unlink()
        else:
            os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(
            err.errno,
            f"Could not write the {what} {path} ({err.strerror or err}); the previous {what} at that path, if any, "
            f"is intact.",
        ) from err


@contextmanager
def locked(path: Path, wait: bool = True, stale_s: float = 600.0) -> Iterator[bool]:
    """Holds an exclusive lock on ``path`` for the block, among processes that share its folder, on one machine or on
    several (NFS, Lustre); yields False, without the lock, if another process holds it and ``wait`` is False.

    The lock is the file itself, created with O_EXCL (atomic on local filesystems, NFS v3 and later, and Lustre, where
    ``flock``/``fcntl`` locks may be local to a node or not work at all) and holding its holder's host, pid and start
    time. While held, its modification time is refreshed every ``stale_s / 10`` seconds. A lock whose holder is dead
    is broken, with a warning: at once if the holder ran on this host (its pid is gone), else when the lock was not
    refreshed for ``stale_s`` seconds (its node died or lost the filesystem).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
    while not _create(path, record):
        seen = _read(path)
        if reason := _stale(path, seen, stale_s):
            warnings.warn(f"Breaking the stale lock {path}: {reason}", stacklevel=3)
            _break(path, seen)
        elif not wait:
            yield False
            return
        else:
            time.sleep(min(1.0, stale_s / 10))
    stop = threading.Event()
    refresh = threading.Thread(target=_refresh, args=(path, stop, stale_s / 10), daemon=True)
    refresh.start()
    try:
        yield True
    finally:
        stop.set()
        refresh.join()
        with contextlib.suppress(OSError):
            if path.read_text() == record:  # still ours: not broken as stale meanwhile
                path.unlink()


def _create(path: Path, record: str) -> bool:
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        file.write(record)
    return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _stale(path: Path, seen: str | None, stale_s: float) -> str | None:
    """Why the lock at ``path``, read as ``seen``, is stale, or None if its holder may be alive (or it is gone)."""
    try:
        age = time.time() - path.stat().st_mtime
        holder = json.loads(seen or "{}")
    except FileNotFoundError:
        return None
    except ValueError:  # being written by its creator
        holder = {}
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return f"its process {holder['pid']} on this host ({holder['host']}) has ended"
        except PermissionError:  # alive, another user's
            pass
        return None
    if age > stale_s:
        return f"held by {holder.get('host', '?')} pid {holder.get('pid', '?')}, not refreshed for {age:.0f} s"
    return None


def _break(path: Path, seen: str | None) -> None:
    # A rename, which one of several breakers wins. One that comes late may take the lock that another has just
    # made after breaking the stale one: it puts that back.
    taken = path.with_name(f".{path.name}.stale.{socket.gethostname()}.{os.getpid()}")
    try:
        os.rename(path, taken)
    except FileNotFoundError:
        return
    if _read(taken) != seen:
        with contextlib.suppress(FileExistsError):
            os.link(taken, path)
    taken.unlink()


def _refresh(path: Path, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        with contextlib.suppress(OSError):
            os.utime(path)
