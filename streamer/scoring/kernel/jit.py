"""How the kernel's functions are compiled: numba, cached on disk where a cache directory is writable.

numba keeps compiled machine code in `NUMBA_CACHE_DIR` (the deployment mounts a writable emptyDir
there: the image's root filesystem is read-only) or beside the sources; where neither is writable the
functions are compiled in memory at every start instead of failing to import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numba

F = TypeVar("F", bound=Callable[..., Any])


def jit(fn: F) -> F:
    """Compile `fn` in nopython mode (inlined into its callers' machine code by LLVM)."""
    return _compile(fn, parallel=False)


def jit_parallel(fn: F) -> F:
    """Compile `fn` with `numba.prange` loops spread over the kernel's threads."""
    return _compile(fn, parallel=True)


def _compile(fn: F, parallel: bool) -> F:
    try:
        return numba.njit(cache=True, parallel=parallel, nogil=True)(fn)  # type: ignore[no-any-return]
    except RuntimeError:  # "cannot cache function ...: no locator available": nothing writable
        return numba.njit(cache=False, parallel=parallel, nogil=True)(fn)  # type: ignore[no-any-return]


def set_threads(count: int | None) -> int:
    """Threads the kernel's device loop uses (None: every core numba sees); returns the count in force."""
    limit = int(numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(limit if count is None else max(1, min(count, limit)))
    return int(numba.get_num_threads())
