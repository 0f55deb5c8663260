"""Background jobs of ``POST /attention/video``: state, folder on disk, limits and expiry.

Each job lives in ``<cache_dir>/jobs/<id>/``: ``job.json`` (its public state, rewritten atomically
at every state change), the upload, and once done the results. A service that starts finds the
folders of the previous run: jobs that were queued or running are marked ``failed`` with
``error: "service restarted"``; finished ones are kept until their time-to-live runs out, and
temporary files a killed run left (``*.tmp``) are removed.

The limits count active (queued or running) jobs only: ``per_client`` per client and
``max_jobs`` in all. Finished jobs stay until their time-to-live, but when the store holds
``max_jobs`` jobs the oldest finished ones are evicted to make room for a new one.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from backend.errors import JobNotFound, TooManyJobs

log = logging.getLogger(__name__)


class JobState(str, Enum):
    """A video job's state; the values are the API's strings (``GET /jobs/{id}``)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:  # f-strings and messages show the API's word
        return self.value


ACTIVE = (JobState.QUEUED, JobState.RUNNING)
FINISHED = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
RESTARTED = "service restarted"
JOB_FILE = "job.json"
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # secrets.token_urlsafe(9): 12 such characters


@dataclass
class Job:
    """One video job; everything but ``cancel`` is saved in ``job.json``."""

    id: str
    client: str
    params: dict[str, Any]
    state: JobState = JobState.QUEUED
    frames_done: int = 0
    frames_total: int = 0
    truncated: bool = False
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    input_name: str = "input"
    cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cancel"}

    def public(self) -> dict[str, Any]:
        """The body of ``GET /jobs/{id}``."""
        now = self.finished_at or time.time()
        elapsed = 0.0 if self.started_at is None else max(0.0, now - self.started_at)
        eta = None
        if self.state == JobState.RUNNING and self.frames_done > 0:
            eta = elapsed / self.frames_done * max(self.frames_total - self.frames_done, 0)
        elif self.state == JobState.DONE:
            eta = 0.0
        return {
            "job": self.id,
            "state": self.state.value,
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "truncated": self.truncated,
            "elapsed_s": round(elapsed, 3),
            "eta_s": None if eta is None else round(eta, 3),
            "error": self.error,
            "params": self.params,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _hidden_tmp(name: str) -> bool:
    return name.startswith(".") and ".tmp" in name


def remove_temporary_files(folder: Path) -> int:
    """Delete the ``*.tmp`` / ``.*.tmp*`` files (unfinished atomic writes) in ``folder``."""
    removed = 0
    for path in folder.iterdir():
        if path.is_file() and (path.name.endswith(".tmp") or _hidden_tmp(path.name)):
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d leftover temporary file(s) of job %s", removed, folder.name)
    return removed


class JobStore:
    """Jobs in memory and on disk; a thread pool runs them; finished ones expire after ``ttl_s``."""

    def __init__(
        self,
        root: Path,
        ttl_s: float,
        per_client: int,
        max_jobs: int,
        workers: int = 1,
        stop_grace_s: float = 10.0,
    ) -> None:
        self.root = Path(root)
        self.ttl_s = ttl_s
        self.per_client = per_client
        self.max_jobs = max_jobs
        self.stop_grace_s = stop_grace_s
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self._queue: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        # daemon workers: a batch still running when the stop grace ends cannot hold the exit
        self._workers = [
            threading.Thread(target=self._work, name=f"video-job-{i}", daemon=True)
            for i in range(workers)
        ]
        for worker in self._workers:
            worker.start()
        self.root.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._sweeper = threading.Thread(
            target=self._sweep_loop, name="video-job-sweeper", daemon=True
        )
        self._sweeper.start()

    # -- disk --------------------------------------------------------------------------
    def folder(self, job: Job) -> Path:
        return self.root / job.id

    def save(self, job: Job) -> None:
        write_atomic(self.folder(job) / JOB_FILE, json.dumps(job.record(), indent=1).encode())

    def _recover(self) -> None:
        """Load the previous run's jobs: unfinished ones become failed ("service restarted");
        the temporary files a killed run left are removed."""
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir():
                folder.unlink(
                    missing_ok=True
                )  # an upload the previous run did not finish receiving
                continue
            remove_temporary_files(folder)
            try:
                record = json.loads((folder / JOB_FILE).read_text())
                job = Job(**{**record, "state": JobState(record.get("state"))})
            except (OSError, ValueError, TypeError) as exc:
                log.warning("removing the unreadable job folder %s (%s)", folder.name, exc)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            if job.state in ACTIVE:
                job.state = JobState.FAILED
                job.error = RESTARTED
                job.finished_at = time.time()
                self.save(job)
            self._jobs[job.id] = job
        self.sweep()

    # -- life cycle --------------------------------------------------------------------
    def create(self, client: str, params: dict[str, Any]) -> Job:
        """A new queued job with its folder; 429 over the per-client or total limit of active
        jobs. A full store first evicts its oldest finished jobs."""
        self.sweep()
        with self._lock:
            active = sum(1 for j in self._jobs.values() if j.client == client and j.state in ACTIVE)
            if active >= self.per_client:
                raise TooManyJobs(
                    f"you already have {active} video jobs queued or running; the limit is "
                    f"{self.per_client} (DINO_VIDEO_JOBS_PER_CLIENT); wait for one to finish "
                    "or cancel it with DELETE /jobs/{id}"
                )
            self._check_total_active()
            self._evict_finished(len(self._jobs) + 1 - self.max_jobs)
            job = Job(id=secrets.token_urlsafe(9), client=client, params=params)
            self.folder(job).mkdir(parents=True)
            self._jobs[job.id] = job
            self.save(job)
            return job

    def _check_total_active(self) -> None:
        active = sum(1 for j in self._jobs.values() if j.state in ACTIVE)
        if active >= self.max_jobs:
            raise TooManyJobs(
                f"the service has {active} video jobs queued or running, its limit "
                f"(DINO_VIDEO_MAX_JOBS); retry when some have finished"
            )

    def _evict_finished(self, count: int) -> None:
        """Delete the ``count`` oldest finished jobs (by finishing time) to make room."""
        if count <= 0:
            return
        finished = sorted(
            (j for j in self._jobs.values() if j.state in FINISHED),
            key=lambda j: (j.finished_at or j.created_at, j.created_at),
        )
        for job in finished[:count]:
            log.info("video job %s evicted: the store holds its limit of jobs", job.id)
            self.delete(job)

    def submit(self, job: Job, run: Callable[[Job], None]) -> None:
        self._queue.put((job, run))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None and not self._stopping.is_set():
            self._run_guarded(*item)

    def _run_guarded(self, job: Job, run: Callable[[Job], None]) -> None:
        if job.cancel.is_set():
            return
        try:
            run(job)
        except Exception:  # noqa: BLE001 - a job's failure must never kill the worker
            log.exception("video job %s failed unexpectedly", job.id)
            self.finish(
                job,
                JobState.FAILED,
                "internal error while processing the video; the server log has details",
            )

    def get(self, job_id: str) -> Job:
        if not JOB_ID.fullmatch(job_id):
            raise JobNotFound(
                f"no video job with that id ({len(job_id)} characters); a job id is the 12 "
                "letters, digits, - or _ that POST /attention/video answered"
            )
        self.sweep()
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(
                f"no video job {job_id!r}; it never existed, was deleted, or expired "
                f"({self.ttl_s:.0f} s after it finished)"
            )
        return job

    def start(self, job: Job, frames_total: int) -> None:
        job.state = JobState.RUNNING
        job.started_at = time.time()
        job.frames_total = frames_total
        self.save(job)

    def finish(self, job: Job, state: JobState, error: str | None = None) -> None:
        """Record the end of a job; while the service stops, unfinished jobs keep their state on
        disk (the next start marks them failed)."""
        with self._lock:
            if job.state in FINISHED or self._stopping.is_set():
                return
            job.state = state
            job.error = error
            job.finished_at = time.time()
            if job.id in self._jobs:
                self.save(job)

    def cancel(self, job: Job) -> None:
        """Stop a queued or running job; the worker sees the flag between batches."""
        job.cancel.set()
        self.finish(job, JobState.CANCELLED)

    def delete(self, job: Job) -> None:
        """Forget the job and delete its folder as one step: once unknown, its files are gone."""
        with self._lock:
            shutil.rmtree(self.folder(job), ignore_errors=True)
            self._jobs.pop(job.id, None)

    def sweep(self) -> None:
        """Delete finished jobs (and their files) older than the time-to-live."""
        now = time.time()
        with self._lock:
            expired = [
                j
                for j in self._jobs.values()
                if j.state in FINISHED
                and j.finished_at is not None
                and now - j.finished_at > self.ttl_s
            ]
        for job in expired:
            log.info("video job %s expired", job.id)
            self.delete(job)

    def _sweep_loop(self) -> None:
        while not self._stopping.wait(min(60.0, max(self.ttl_s / 2, 0.5))):
            try:
                self.sweep()
            except (
                OSError
            ) as exc:  # pragma: no cover - a full or read-only disk must not stop the loop
                log.warning("job clean-up failed: %s", exc)

    def close(self) -> bool:
        """Stop the workers at their next batch, waiting at most ``stop_grace_s``; unfinished
        jobs stay as they are on disk (the next start marks them failed). True when every
        worker stopped in time."""
        self._stopping.set()
        for job in list(self._jobs.values()):
            job.cancel.set()
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + self.stop_grace_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        running = [w.name for w in self._workers if w.is_alive()]
        if running:
            log.warning("video workers still busy after %.0f s: %s", self.stop_grace_s, running)
        return not running
