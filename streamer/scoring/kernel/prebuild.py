"""`python -m streamer.scoring.kernel.prebuild`: compile the scoring kernel into numba's cache, ahead of time.

The container image runs this at build time with `NUMBA_CACHE_DIR` pointing into the image; the pod's
init container copies that cache into the writable `NUMBA_CACHE_DIR` emptyDir, so a new pod loads the
kernel in seconds instead of compiling it (about 60 s on 2 cores). The compiled code depends on the
kernel's sources (the cache is stamped with their digest, `jit.STAMP`) and on the CPU it was built for,
not on the model: numba specialises on argument types, and every model passes the same ones. Where the
node's CPU differs from the build machine's, numba finds no entry for it and compiles at start, as
without a seeded cache.

Prints one line: the seconds the compilation (or the load from an existing cache) took.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    from streamer.scoring.factory import build_pipeline
    from streamer.scoring.pipeline import PipelineConfig

    if not os.environ.get("NUMBA_CACHE_DIR"):
        print("prebuild: set NUMBA_CACHE_DIR to the directory the compiled kernel should go to",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    pipeline = build_pipeline(None, "cpu", PipelineConfig(path="kernel"))  # compiles, or loads the cache
    if pipeline.kernel is None:
        print("prebuild: the pipeline did not build the kernel", file=sys.stderr)
        return 1
    print(f"prebuild: scoring kernel in {os.environ['NUMBA_CACHE_DIR']} "
          f"({time.perf_counter() - started:.1f} s: compiled, or loaded from the cache)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
