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
from typing import Any, TypeVar

import numba
from numba.core import caching

F = TypeVar("F", bound=Callable[..., Any])


_ROOT = Path(__file__).resolve().parents[3]
_SOURCES = (*sorted((_ROOT / "streamer" / "scoring").rglob("*.py")), _ROOT / "model" / "normaliser.py")
STAMP = hashlib.sha256(b"".join(p.read_bytes() for p in _SOURCES)).hexdigest()


_KERNEL = str(Path(__file__).resolve().parent)


def _stamped(base: type) -> type:
    """numba's locator `base`, stamping the kernel's files with STAMP (others as numba does)."""

    def get_source_stamp(self: Any) -> object:
        mine = str(Path(self._py_file).resolve().parent) == _KERNEL
        return STAMP if mine else base.get_source_stamp(self)

    return type(f"Stamped{base.__name__}", (base,), {"get_source_stamp": get_source_stamp})


_LOCATORS = ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")
if all(hasattr(caching, name) for name in (*_LOCATORS, "CacheImpl")):
    caching.CacheImpl._locator_classes = [_stamped(getattr(caching, name)) for name in _LOCATORS]


def jit(fn: F) -> F:
    """Compile `fn` in nopython mode, inlined into its compiled callers (a call that passes the `Slab`
    would otherwise count references of its three dozen arrays at every row)."""
    return _compile(fn, parallel=False, inline="always")


def jit_parallel(fn: F) -> F:
    """Compile `fn` with `numba.prange` loops spread over the kernel's threads."""
    return _compile(fn, parallel=True)


def _compile(fn: F, parallel: bool, inline: str = "never") -> F:
    options = {"parallel": parallel, "nogil": True, "error_model": "numpy", "inline": inline}
    try:
        return numba.njit(cache=True, **options)(fn)  # type: ignore[no-any-return]
    except RuntimeError:  # "cannot cache function ...: no locator available": nothing writable
        return numba.njit(cache=False, **options)(fn)  # type: ignore[no-any-return]


def set_threads(count: int | None) -> int:
    """Threads the kernel's device loop uses (None: every core numba sees); returns the count in force."""
    limit = int(numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(limit if count is None else max(1, min(count, limit)))
    return int(numba.get_num_threads())
