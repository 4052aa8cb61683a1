"""Reuse of freed memory on the CPU, for training and the benchmark alike (importable without the CLI's
dependencies)."""

import ctypes


def keep_freed_memory() -> bool:
    """Asks glibc to keep freed memory for reuse; returns whether it agreed (False off glibc).

    By default glibc maps every block over 32 MB afresh and hands it back when freed, so each new batch-sized
    tensor on the CPU pays page faults for all its pages: on a 2-core machine that cost the paper network's
    training step about a third of its speed (docs/guide.md, Speed options). Training and the benchmark reuse the
    same shapes every step, so the kept memory is reused; the process keeps its peak memory until it exits.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3
    # Both values are C ints: a larger one would arrive cut to its low 32 bits (1 << 36 as 0: trim at every free).
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
