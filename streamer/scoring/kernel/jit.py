"""How the kernel's functions are compiled: numba, cached on disk where a cache directory is writable.

numba keeps compiled machine code in `NUMBA_CACHE_DIR` (the deployment mounts a writable emptyDir
there: the image's root filesystem is read-only) or beside the sources; where neither is writable the
functions are compiled in memory at every start instead of failing to import.

numba invalidates a cached function when *its own* source file changes, not when a function it calls
or a constant it reads (from `scoring` or `model.normaliser`) does; so the cache here is stamped with
a digest of every source the kernel is built from, and any change there recompiles it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import numba
from numba.core import caching

F = TypeVar("F", bound=Callable[..., Any])


_ROOT = Path(__file__).resolve().parents[3]
_SOURCES = (*sorted((_ROOT / "streamer" / "scoring").rglob("*.py")), _ROOT / "model" / "normaliser.py")
STAMP = hashlib.sha256(b"".join(p.read_bytes() for p in _SOURCES)).hexdigest()


_KERNEL = str(Path(__file__).resolve().parent)


def _stamped(base: Any) -> type:
    """numba's locator `base`, stamping the kernel's files with STAMP (others as numba does)."""

    def get_source_stamp(self: Any) -> object:
        mine = str(Path(self._py_file).resolve().parent) == _KERNEL
        return STAMP if mine else base.get_source_stamp(self)

    return type(f"Stamped{base.__name__}", (base,), {"get_source_stamp": get_source_stamp})


_LOCATORS = ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")
if all(hasattr(caching, name) for name in (*_LOCATORS, "CacheImpl")):
    caching.CacheImpl._locator_classes = [
        _stamped(getattr(caching, name)) for name in _LOCATORS]  # type: ignore[misc]


def jit(fn: F) -> F:
    """Compile `fn` in nopython mode, inlined into its compiled callers (a call that passes the `Slab`
    would otherwise count references of its three dozen arrays at every row)."""
    return _compile(fn, parallel=False, inline="always")


def jit_own(fn: F) -> F:
    """Compile `fn` as a function of its own, not inlined: the loop a `prange` body calls (numba's
    parallel pass would take an inlined body that writes only into the arrays of a tuple for dead code)."""
    return _compile(fn, parallel=False)


def jit_parallel(fn: F) -> F:
    """Compile `fn` with `numba.prange` loops spread over the kernel's threads."""
    return _compile(fn, parallel=True)


def _compile(fn: F, parallel: bool, inline: Literal["never", "always"] = "never") -> F:
    try:
        compiled = numba.njit(fn, cache=True, parallel=parallel, nogil=True, error_model="numpy",
                              inline=inline)
    except RuntimeError:  # "cannot cache function ...: no locator available": nothing writable
        compiled = numba.njit(fn, cache=False, parallel=parallel, nogil=True, error_model="numpy",
                              inline=inline)
    return cast(F, compiled)


def max_threads() -> int:
    """Threads numba started with (every core it sees, or NUMBA_NUM_THREADS)."""
    return int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]


def use_threads(count: int) -> None:
    """Threads the kernel's device loop uses from this Python thread on (at most `max_threads()`)."""
    numba.set_num_threads(max(1, min(count, max_threads())))
