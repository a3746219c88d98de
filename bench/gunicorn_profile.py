"""Gunicorn hooks that profile requests with cProfile, for ``bench/signup.py --profile``.

Loaded with ``gunicorn -c bench/gunicorn_profile.py``. Only requests carrying an
``X-Bench-Phase`` header are profiled (so warm-up is left out), one profile per
phase name; each worker writes ``<phase>-<pid>.prof`` into
``$ASSENT_BENCH_PROFILE_DIR`` when it exits. ``ASSENT_BENCH_PROFILE_CLOCK=cpu``
times functions by the worker's CPU time instead of wall time, leaving out the
time spent waiting for PostgreSQL, Redis or a busy CPU. cProfile slows Python
code down markedly: rates measured with it on are not representative.
"""

from __future__ import annotations

import cProfile
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

_PHASE = re.compile(r"^[a-z0-9-]{1,32}$")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def post_worker_init(worker: Any) -> None:
    app: WsgiApp = worker.wsgi
    profiles: dict[str, cProfile.Profile] = {}
    clock = time.process_time if os.environ.get("ASSENT_BENCH_PROFILE_CLOCK") == "cpu" else time.perf_counter

    def profiled(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        phase = environ.get("HTTP_X_BENCH_PHASE", "")
        if not _PHASE.match(phase):
            return app(environ, start_response)
        profile = profiles.get(phase) or profiles.setdefault(phase, cProfile.Profile(clock))
        profile.enable()
        try:
            # Body iteration and close() (request_finished) are part of the request's cost.
            result = app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            profile.disable()
        return [body]

    worker.wsgi = profiled
    worker.bench_profiles = profiles


def worker_exit(server: Any, worker: Any) -> None:
    out_dir = os.environ.get("ASSENT_BENCH_PROFILE_DIR")
    profiles: dict[str, cProfile.Profile] = getattr(worker, "bench_profiles", {})
    if not out_dir:
        return
    for phase, profile in profiles.items():
        profile.dump_stats(os.path.join(out_dir, f"{phase}-{os.getpid()}.prof"))
