"""Host memory: keep freed blocks in the process instead of returning them to the OS.

XLA on the CPU allocates its large temporaries (tens of MB for the aligner's all-pairs FFT
correlation) with the C library's malloc. glibc serves blocks above its mmap threshold with
fresh mmap'd pages and unmaps them on free, so every call pays page faults to zero the same
memory again; on the 2-core development machine that was about a third of the FFT
similarity's time (about 50 -> 31 ms at the paper's shapes; `tools/bench_correlation.py`
records whether this was on). `keep_freed_memory()` asks glibc (mallopt) to serve every block
from the heap and to keep freed memory mapped: the process holds its peak memory for the rest of
its life (about +160 MB for the benchmark above), in exchange for no repeated page faults.

A no-op (returns False) where the C library is not glibc (macOS, musl) or with
OSTEOJAX_KEEP_FREED_MEMORY=0 in the environment.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4   # glibc malloc.h


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
  """Serve large blocks from the heap (no mmap) and trim it only above `trim_threshold` bytes
  of free memory at its top. -> True if glibc accepted both settings."""
  if os.environ.get('OSTEOJAX_KEEP_FREED_MEMORY', '1') == '0':
    return False
  name = ctypes.util.find_library('c')
  try:
    libc = ctypes.CDLL(name or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))
