"""At most one checkpoint written at a time, in a worker thread, while the scoring loop goes on.

The loop hands over a job (`Checkpointer.begin`: its snapshot is a copy, so the worker shares nothing
with the loop), polls `collect()` every turn, and finishes a written job itself (`Checkpointer.finish`:
the commit and the bookkeeping stay on the loop's thread). Back-pressure: while a job is being written
no other is started; the next checkpoint is taken as soon as this one is collected, and holds every
device changed meanwhile (the merge of the checkpoints that could not start). Scoring never waits for
a background write; only revoke and shutdown do (`wait`), before their own final checkpoint.

The worker is a daemon thread: a process that is killed or abandons its state never waits for it,
and a write it leaves half done commits nothing (see `checkpointer.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Job = TypeVar("Job")


class BackgroundWriter(Generic[Job]):
    """Runs `write(job)` for one job at a time in a worker thread; `write` must not raise."""

    def __init__(self, write: Callable[[Job], None], name: str = "rnnwatch-checkpoint") -> None:
        self._write = write
        self._name = name
        self._job: Job | None = None
        self._done = threading.Event()

    @property
    def job(self) -> Job | None:
        """The job submitted and not yet collected."""
        return self._job

    @property
    def busy(self) -> bool:
        """A job was submitted and not yet collected (written or not)."""
        return self._job is not None

    def submit(self, job: Job) -> None:
        if self._job is not None:
            raise RuntimeError("a checkpoint is still being written; collect it before submitting another")
        self._job = job
        self._done.clear()
        threading.Thread(target=self._run, args=(job,), name=self._name, daemon=True).start()

    def _run(self, job: Job) -> None:
        try:
            self._write(job)
        finally:
            self._done.set()

    def collect(self) -> Job | None:
        """The job, once written (then the writer is free again); None while it is being written or idle."""
        if self._job is None or not self._done.is_set():
            return None
        job, self._job = self._job, None
        return job

    def wait(self, timeout_s: float | None = None) -> Job | None:
        """Block until the job in hand is written (at most `timeout_s`), then collect it."""
        if self._job is not None:
            self._done.wait(timeout_s)
        return self.collect()
