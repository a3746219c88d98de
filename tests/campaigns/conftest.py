"""Fixtures for the campaign integration tests: worker processes we can start, kill -9 and restart.

The workers consume a queue of their own, and the test process routes the
campaign tasks to it, so a session worker started by other integration tests
(``celery_worker_process``) never takes a campaign batch from these tests, and
these workers take nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from config.celery import app as celery_app
from tests.conftest import ROOT, worker_env
from tests.mailserver import MailServer

QUEUE = "assent-campaigns-it"
ROUTES = {"campaigns.tasks.*": {"queue": QUEUE}}
SITE_URL = "https://assent.test"  # links in messages: https, as in production; the path is served by the live server

# Short timings, so leases expire and heartbeats go stale within seconds (the same in the test process).
TIMINGS = {
    "DELIVERY_LEASE_SECONDS": 5,
    "DELIVERY_RECONCILE_SECONDS": 1,
    "EMAIL_RETRY_BACKOFF_SECONDS": 1,
    "DELIVERY_BATCH_SIZE": 50,
}

# `celery worker`, with the campaign tasks routed to QUEUE: a batch re-enqueues its successor there.
_WORKER = f"""
import sys
from config.celery import app
app.conf.task_routes = {ROUTES!r}
app.worker_main(["worker", *sys.argv[1:]])
"""


class Worker:
    """One ``celery worker --pool=solo`` process, in a process group of its own."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                "--pool=solo",
                "--loglevel=INFO",
                "-n",
                f"{name}@%h",
                "-Q",
                QUEUE,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill -9 reaches the whole worker and nothing else
        )

    def ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"the Celery worker {self.name} exited early:\n{self.log()}")
        return "ready." in self.log_path.read_text(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9 the worker's process group: no warm shutdown, no acks, no cleanup."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()


class Workers:
    """Start and kill campaign worker processes during one test."""

    def __init__(self, env: dict[str, str], log_dir: Path, broker: redis.Redis) -> None:
        self.env = env
        self.log_dir = log_dir
        self.broker = broker
        self.started: list[Worker] = []

    def start(self, count: int = 1, timeout: float = 45) -> list[Worker]:
        """Start ``count`` workers side by side and wait until every one consumes."""
        new = []
        for _ in range(count):
            name = f"campaigns-it-{len(self.started) + 1}"
            worker = Worker(name, self.env, self.log_dir / f"{name}.log")
            self.started.append(worker)
            new.append(worker)
        deadline = time.monotonic() + timeout
        while not all(w.ready() for w in new):
            if time.monotonic() > deadline:
                pytest.fail("the Celery worker(s) did not become ready:\n" + "\n".join(w.log() for w in new))
            time.sleep(0.1)
        return new

    def kill_all(self) -> None:
        # At the end of a test nothing is left to finish, and a warm shutdown costs a second or two.
        for worker in self.started:
            worker.kill()

    def logs(self) -> str:
        """Every worker's log, for a failure message."""
        return "\n".join(f"--- {w.name} ---\n{w.log()[-6000:]}" for w in self.started)

    def purge(self) -> None:
        """Drop whatever an earlier test left in the queue."""
        for key in self.broker.scan_iter(f"{QUEUE}*"):
            self.broker.delete(key)


def _route(routes: Any) -> None:
    """Route this process's tasks by ``routes`` (Celery caches the routing table and the router)."""
    celery_app.conf.task_routes = routes
    celery_app.amqp.flush_routes()
    celery_app.amqp.router = celery_app.amqp.Router()  # type: ignore[misc]  # a settable cached property


@pytest.fixture
def workers(transactional_db: None, mail_server: MailServer, settings: Any, tmp_path: Path) -> Iterator[Workers]:
    """Campaign workers on Redis, the test database and the test SMTP server; tasks leave the test process
    through the broker (not eagerly), and the test process uses the workers' timings and SITE_URL."""
    broker_url = os.environ.get("CELERY_BROKER_URL", "")
    if not broker_url.startswith("redis"):
        pytest.fail("integration tests need CELERY_BROKER_URL=redis://… (run them with `make test`)")
    for name, value in TIMINGS.items():
        setattr(settings, name, value)
    settings.SITE_URL = SITE_URL
    settings.SITE_ORIGIN = SITE_URL
    env = worker_env(
        site_url=SITE_URL,
        mail_server=mail_server,
        var_dir=tmp_path / "var",
        **{name: str(value) for name, value in TIMINGS.items()},
    )
    (tmp_path / "var").mkdir()
    manager = Workers(env, tmp_path, redis.Redis.from_url(broker_url))
    manager.purge()
    mail_server.clear()
    routes, router = celery_app.conf.task_routes, celery_app.amqp.router
    _route(ROUTES)
    celery_app.conf.task_always_eager = False
    try:
        yield manager
    finally:
        manager.kill_all()
        manager.purge()
        mail_server.clear()
        _route(routes)
        celery_app.amqp.router = router  # type: ignore[misc]
        celery_app.conf.task_always_eager = True
