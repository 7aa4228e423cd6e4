"""The worker: claims jobs from the `job` table and runs them; APScheduler only fires triggers.

Scheduled in one process (memory job store, never shared): `poll` drains claimable jobs and
`reap` fails jobs whose workers died too often. After publishing a job, a worker brings its
family's forest up to date in a transaction of its own; one that died in between is caught up
by the next poll of any worker (`job.forest_at` is NULL until then).
A LISTEN connection wakes `poll` as soon as an ingest plans new jobs (NOTIFY).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from apscheduler.schedulers.blocking import BlockingScheduler
from sqlalchemy.engine import Engine

from service import errors, settings
from service.compute import engine as compute
from service.db import engine as db_engine
from service.db import jobs
from service.jobs import edges
from service.sources import store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    job_id: int
    state: str  # pending (will be retried), failed, or lost
    attempts: int
    error: str


Report = Callable[[edges.Outcome | Failure], None]


def _not_a_skipped_poll(record: logging.LogRecord) -> bool:
    return "maximum number of running instances" not in record.getMessage()


def quiet_skipped_polls() -> None:
    """A poll that comes while the previous one still runs a job is skipped, as it should be:
    APScheduler's warning about it, every poll interval, says nothing to act on."""
    scheduler_log = logging.getLogger("apscheduler.scheduler")
    if _not_a_skipped_poll not in scheduler_log.filters:
        scheduler_log.addFilter(_not_a_skipped_poll)


def exit_code(results: list[edges.Outcome | Failure]) -> int:
    """1 if a job ended failed (not one that failed once and then ran), else 0."""
    return int(any(isinstance(r, Failure) and r.state == "failed" for r in results))


def describe(result: edges.Outcome | Failure) -> str:
    """One line about a finished or failed job, for people."""
    if isinstance(result, edges.Outcome):
        return (
            f"job {result.job_id} {result.label}: {result.n_edges:,} edges,"
            f" {result.n_coactivations:,} co-activations"
            f" ({result.n_coactivations / max(result.compute_seconds, 1e-9):.3g}/s),"
            f" compute {result.compute_seconds:.2f} s, write {result.write_seconds:.2f} s,"
            f" forest {result.forest_seconds:.2f} s"
        )
    return (
        f"job {result.job_id} failed on attempt {result.attempts} ({result.state}): {result.error}"
    )


class Worker:
    """Runs edge jobs against one database; any number of workers may run at once."""

    def __init__(
        self, engine: Engine, config: settings.Settings, report: Report | None = None
    ) -> None:
        self.engine = engine
        self.config = config
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.store = store.Store.under(config.home)
        self.report = report or (lambda _result: None)
        self.runner: compute.Runner | None = None
        if config.ray is not None:  # joined once: every job's blocks go to the cluster
            from service.compute import cluster

            self.runner = cluster.RayRunner(
                config.ray, cpus=config.ray_cpus_per_task, gpus=config.ray_gpus_per_task
            )

    def run_one(self) -> edges.Outcome | Failure | None:
        """Claim and run one job; None when nothing is claimable."""
        job = db_engine.transaction(
            self.engine, lambda conn: jobs.claim(conn, self.name, self.config.lease_seconds)
        )
        if job is None:
            return None
        result: edges.Outcome | Failure
        try:
            result = edges.run(self.engine, self.config, self.store, job, self.runner)
        except Exception as exc:
            message = errors.describe(exc)
            log.warning("job %d failed on attempt %d: %s", job.id, job.attempts, message)
            state = db_engine.transaction(self.engine, lambda conn: jobs.fail(conn, job, message))
            result = Failure(job.id, state, job.attempts, message)
        else:
            started = time.perf_counter()
            self.update_forests()
            result = dataclasses.replace(result, forest_seconds=time.perf_counter() - started)
        self.report(result)
        return result

    def update_forests(self) -> int:
        """Bring the forest up to date after every done job it does not include yet; returns
        how many. A failure is logged and left to the next poll."""
        n = 0
        try:
            while db_engine.transaction(self.engine, jobs.next_forest_update) is not None:
                n += 1
        except Exception:
            log.warning("forest update failed; the next poll tries again", exc_info=True)
        return n

    def drain(self) -> list[edges.Outcome | Failure]:
        """Catch the forest up, then run jobs until none is claimable."""
        self.update_forests()
        done = []
        while (result := self.run_one()) is not None:
            done.append(result)
        return done

    def reap(self) -> None:
        """Fail jobs whose lease expired with no attempts left."""
        with self.engine.begin() as conn:
            if n := jobs.reap(conn):
                log.warning("%d job(s) failed after their workers died", n)

    def serve(self, libpq_url: str, stop: threading.Event | None = None) -> None:
        """Run the scheduler until SIGTERM, SIGINT or `stop` is set."""
        stop = stop or threading.Event()
        quiet_skipped_polls()
        scheduler = BlockingScheduler(timezone=dt.UTC)
        now = dt.datetime.now(dt.UTC)
        common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        scheduler.add_job(
            self.drain,
            "interval",
            seconds=self.config.poll_seconds,
            id="poll",
            next_run_time=now,
            **common,
        )
        scheduler.add_job(
            self.reap, "interval", seconds=self.config.lease_seconds, id="reap", **common
        )

        def wake() -> None:
            scheduler.modify_job("poll", next_run_time=dt.datetime.now(dt.UTC))

        listener = threading.Thread(
            target=_listen, args=(libpq_url, wake, stop), name="listen", daemon=True
        )
        listener.start()

        def shutdown(*_args: object) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, shutdown)
        watcher = threading.Thread(
            target=lambda: (stop.wait(), scheduler.shutdown(wait=False)), daemon=True
        )
        watcher.start()
        try:
            scheduler.start()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            stop.set()
            listener.join(timeout=5)


def _listen(libpq_url: str, wake: Callable[[], None], stop: threading.Event) -> None:
    """Call `wake` on every NOTIFY of new jobs; reconnect after errors until `stop`."""
    while not stop.is_set():
        try:
            with psycopg.connect(libpq_url, autocommit=True) as conn:
                conn.execute(f"LISTEN {jobs.CHANNEL}")
                while not stop.is_set():
                    for _notify in conn.notifies(timeout=1.0, stop_after=1):
                        wake()
        except Exception:
            log.warning("LISTEN connection lost; reconnecting", exc_info=True)
            stop.wait(2.0)
