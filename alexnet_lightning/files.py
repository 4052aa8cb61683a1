"""Files written whole or not at all, and a lock among processes that share a folder."""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout


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
def locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Holds an exclusive lock on the file ``path`` (created if need be) for the block, among processes that share a
    folder; yields False, without the lock, if another process holds it and ``wait`` is False. The system drops a
    lock when its process ends, however it ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
