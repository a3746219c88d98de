"""Signups per second through the real stack, against a trivial view on the same server (issue #2).

What it measures
    The hosted signup form, ``POST /s/demo/newsletter/``, served by gunicorn
    (sync workers, as in the Procfile) with PostgreSQL as the database and Redis
    as cache (rate limits) and Celery broker. Each request is a browser-like
    form post with a unique address, the signed render stamp and the wording
    version taken from one real GET of the page, and one ticked audience; it
    must be answered ``303`` to the thanks page. Every accepted signup writes a
    subscriber, a subscription, a consent event and a queued confirmation email
    in one transaction, then queues the confirmation task in Redis. No Celery
    worker runs, so tasks only queue up and no mail is sent.

    The baseline is ``GET /robots.txt`` (a view with no database or cache
    access, behind the same middleware) with the same client, concurrency and
    count, measured just before the signups: the ceiling that gunicorn, Django's
    request handling and the client impose. The output gives both rates, their
    ratio, p50/p99 latency, the rows found in the database afterwards (they must
    match the signups answered), and where the machine's CPU went, with a
    warning when other work on the machine took a noticeable share.

    The anti-abuse limits are raised (see ``SETTINGS``, printed with the
    results) so that the accepted path is measured, not the refusal path.

How to run it
    PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and Redis on
    127.0.0.1:6379 must be running. From the repository root::

        .venv/bin/python bench/signup.py [--requests N] [--concurrency C] [--workers W]

    Other options (``--help``): ``--warmup N``; ``--keep-db``; ``--debug false``
    for production settings; ``--access-log`` as in the Procfile;
    ``--profile wall|cpu`` to cProfile the workers (``--profile-dir`` keeps the
    .prof files); ``--app-dir DIR`` to benchmark another checkout (say a
    ``git clone --shared`` of an older commit) with this repository's venv.

    The script (re)creates the database ``assent_bench`` and flushes Redis
    databases 12 and 13 at start and end; it touches nothing else. Only
    loopback traffic; every wait is bounded in time. It exits non-zero when
    more than ``--max-error-percent`` of the requests fail or the database does
    not hold exactly the signups that were answered.

Client
    One process per connection, each a tight loop over raw blocking sockets: no
    HTTP library, one ``sendall`` per request, read to EOF. gunicorn's sync
    workers close the connection after every response, so each request opens a
    new TCP connection, as a browser talking to gunicorn directly would.
    Latency is measured from ``connect()`` to the last byte of the response, so
    it includes the time a request waits in the listen queue for a free worker.
    The client runs on the same machine and competes for the same cores; its
    CPU use is printed next to the server's.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import pstats
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier
from pathlib import Path
from queue import Empty
from urllib.parse import quote, urlencode

import psutil
import psycopg
import redis
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
PROFILE_HOOKS = ROOT / "bench" / "gunicorn_profile.py"

HOST = "127.0.0.1"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_NAME = "assent_bench"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
CACHE_URL = "redis://127.0.0.1:6379/12"
BROKER_URL = "redis://127.0.0.1:6379/13"
CELERY_QUEUE = "celery"  # the default queue's list key in the broker database

SIGNUP_PATH = "/s/demo/newsletter/"
THANKS_PATH = "/s/demo/newsletter/thanks/"
TRIVIAL_PATH = "/robots.txt"
EMAIL_DOMAIN = "bench.example"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0 assent-bench/1"

# Raised anti-abuse limits: the benchmark measures the accepted path, not refusals.
SETTINGS = {
    "SIGNUP_LIMIT_PER_IP_PER_HOUR": "100000000",
    "SIGNUP_LIMIT_PER_FORM_PER_MINUTE": "100000000",
    "CONFIRMATION_DAILY_CAP": "1000",
    "SIGNUP_MIN_FILL_SECONDS": "1",
}
MIN_FILL_SECONDS = int(SETTINGS["SIGNUP_MIN_FILL_SECONDS"])

SOCKET_TIMEOUT = 30.0
BOOT_TIMEOUT = 60.0
COMMAND_TIMEOUT = 600.0
MAX_ERROR_SAMPLES = 3


# --- Load client (runs in the client processes) ----------------------------------


@dataclass(frozen=True)
class PhaseSpec:
    """One batch of identical requests; ``body_prefix`` + index + ``body_suffix`` makes a signup's body."""

    name: str
    label: str
    count: int
    concurrency: int
    timeout: float
    head: bytes  # request line and headers, without Content-Length and the final blank line
    expect: bytes  # the response must start with this status line prefix
    expect_header: bytes = b""  # ... and contain this header line (when set)
    body_prefix: bytes = b""
    body_suffix: bytes = b""
    has_body: bool = False


@dataclass
class ClientResult:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    started: float = math.inf
    finished: float = 0.0
    cpu_seconds: float = 0.0


def _request(spec: PhaseSpec, index: int) -> bytes:
    if not spec.has_body:
        return spec.head + b"\r\n"
    body = b"%s%d%s" % (spec.body_prefix, index, spec.body_suffix)
    return b"%sContent-Length: %d\r\n\r\n%s" % (spec.head, len(body), body)


def _exchange(address: tuple[str, int], payload: bytes) -> bytes:
    """Send one request on a fresh connection and read the response to EOF."""
    chunks: list[bytes] = []
    with socket.create_connection(address, timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(payload)
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _classify(spec: PhaseSpec, response: bytes) -> str | None:
    """None when the response is the expected one, else a short label for the error table."""
    head_end = response.find(b"\r\n\r\n")
    head = response[: head_end + 2] if head_end >= 0 else response
    if head.startswith(spec.expect) and (not spec.expect_header or spec.expect_header in head):
        return None
    status = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")[:60] or "empty response"
    title = re.search(rb"<title>\s*([^<]{1,200})", response)
    if title and status.split(" ")[1:2] == ["500"]:  # Django's debug page names the exception
        status += " (" + " ".join(title.group(1).decode("utf-8", "replace").split())[:80] + ")"
    location = re.search(rb"\r\nlocation: ([^\r]*)", head, re.IGNORECASE)
    return f"{status} -> {location.group(1).decode('latin-1')}" if location else status


def _client_main(
    spec: PhaseSpec,
    address: tuple[str, int],
    counter: Synchronized[int],
    barrier: Barrier,
    results: Queue[ClientResult],
) -> None:
    """One connection's loop: take the next request index, send it, time it, until the phase is done."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    result = ClientResult()
    barrier.wait(timeout=BOOT_TIMEOUT)
    before = resource.getrusage(resource.RUSAGE_SELF)
    result.started = time.perf_counter()
    deadline = result.started + spec.timeout
    lock = counter.get_lock()
    while time.perf_counter() < deadline:
        with lock:
            index = counter.value
            if index >= spec.count:
                break
            counter.value = index + 1
        payload = _request(spec, index)
        sent = time.perf_counter()
        try:
            response = _exchange(address, payload)
        except OSError as exc:
            error: str | None = f"{type(exc).__name__}: {exc}"[:80]
            response = b""
        else:
            error = _classify(spec, response)
        elapsed = time.perf_counter() - sent
        if error is None:
            result.latencies.append(elapsed)
        else:
            result.errors[error] += 1
            if len(result.samples) < MAX_ERROR_SAMPLES:
                result.samples.append(response[:600].decode("utf-8", "replace"))
    result.finished = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results.put(result)


# --- CPU accounting ---------------------------------------------------------------

CPU_GROUPS = (
    "gunicorn (master + workers)",
    f"postgres backends ({DB_NAME})",
    "postgres shared processes",
    "redis-server",
    "load client",
    "everything else",
)


CHILDREN = " (finished children)"


@dataclass
class CpuSnapshot:
    per_process: dict[int, tuple[str, float]]
    # CPU of finished children a process has reaped, keyed "other:<name> (finished children)".
    reaped: dict[int, tuple[str, float]]
    machine_busy: float
    machine_iowait: float
    taken_at: float


def _cpu_group(proc: psutil.Process, gunicorn_pids: set[int]) -> str:
    """The CPU_GROUPS entry a process belongs to, or ``other:<name>`` for the rest of the machine."""
    if proc.pid in gunicorn_pids:
        return CPU_GROUPS[0]
    name = proc.info["name"] or "?"
    cmdline = " ".join(proc.info["cmdline"] or [])
    if name == "redis-server" or cmdline.startswith("redis-server"):
        return CPU_GROUPS[3]
    if name == "postgres" or cmdline.startswith("postgres"):
        if f" {DB_NAME} " in f"{cmdline} ":
            return CPU_GROUPS[1]
        # Other databases' backends ("postgres: 15/main: user db host(port) state") are someone else's.
        title = cmdline.split(":")
        if len(title) >= 3 and len(title[2].split()) >= 3 and "(" in title[2]:
            return "other:postgres (other databases)"
        return CPU_GROUPS[2]
    return f"other:{name}"


def _cpu_snapshot(gunicorn_pid: int, exclude: set[int]) -> CpuSnapshot:
    """CPU seconds so far of every process (but ``exclude``), grouped, and of the whole machine."""
    try:
        master = psutil.Process(gunicorn_pid)
        gunicorn_pids = {gunicorn_pid, *(child.pid for child in master.children())}
    except psutil.Error:
        gunicorn_pids = set()
    per_process: dict[int, tuple[str, float]] = {}
    reaped: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None and proc.pid not in exclude:
            per_process[proc.pid] = (_cpu_group(proc, gunicorn_pids), times.user + times.system)
            # Processes that came and went (a test run, say) are found in their parent's children times
            # (approximate: a child reaped during the phase brings in all of its CPU, also from before).
            label = f"other:{proc.info['name'] or '?'}{CHILDREN}"
            reaped[proc.pid] = (label, times.children_user + times.children_system)
    machine = psutil.cpu_times()
    busy = sum(getattr(machine, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal", "guest"))
    return CpuSnapshot(per_process, reaped, busy, getattr(machine, "iowait", 0.0), time.perf_counter())


def _cpu_usage(start: CpuSnapshot, end: CpuSnapshot, client_cpu: float) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds per group between two snapshots, and the largest other consumers by name."""
    usage = dict.fromkeys(CPU_GROUPS, 0.0)
    others: dict[str, float] = {}
    deltas = [
        (group, seconds - before.get(pid, (group, 0.0))[1])
        for now, before in ((end.per_process, start.per_process), (end.reaped, start.reaped))
        for pid, (group, seconds) in now.items()
    ]
    for group, spent in deltas:
        if group.startswith("other:"):
            name = group.removeprefix("other:")
            others[name] = others.get(name, 0.0) + spent
        else:
            usage[group] += spent
    usage[CPU_GROUPS[4]] = client_cpu
    accounted = sum(usage.values())
    # The rest of the machine: other processes, the kernel, this script.
    usage[CPU_GROUPS[5]] = max(0.0, (end.machine_busy - start.machine_busy) - accounted)
    return usage, others


# --- Running a phase ----------------------------------------------------------------


@dataclass
class PhaseResult:
    spec: PhaseSpec
    latencies: list[float]
    errors: Counter[str]
    samples: list[str]
    wall: float
    cpu: dict[str, float]
    others: dict[str, float]
    machine_busy: float
    machine_iowait: float

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def missing(self) -> int:
        return self.spec.count - self.ok - self.failed

    @property
    def rate(self) -> float:
        return self.ok / self.wall if self.wall > 0 else 0.0

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile of successful requests' latency, in seconds."""
        if not self.latencies:
            return math.nan
        rank = max(1, math.ceil(fraction * len(self.latencies)))
        return self.latencies[rank - 1]


def run_phase(spec: PhaseSpec, address: tuple[str, int], gunicorn_pid: int) -> PhaseResult:
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("q", 0)
    barrier = ctx.Barrier(spec.concurrency + 1)
    results: Queue[ClientResult] = ctx.Queue()
    clients = [
        ctx.Process(target=_client_main, args=(spec, address, counter, barrier, results), daemon=True)
        for _ in range(spec.concurrency)
    ]
    for client in clients:
        client.start()
    collected: list[ClientResult] = []
    mine = {os.getpid(), *(client.pid for client in clients if client.pid is not None)}
    finished = False
    try:
        start = _cpu_snapshot(gunicorn_pid, mine)
        barrier.wait(timeout=BOOT_TIMEOUT)
        give_up = time.monotonic() + spec.timeout + SOCKET_TIMEOUT + 30
        while len(collected) < len(clients) and time.monotonic() < give_up:
            try:
                collected.append(results.get(timeout=1.0))
            except Empty:
                if not any(client.is_alive() for client in clients):
                    break
        end = _cpu_snapshot(gunicorn_pid, mine)
        finished = True
    finally:
        for client in clients:
            if not finished:
                client.terminate()
            client.join(timeout=5)
            if client.is_alive():
                client.terminate()
                client.join(timeout=5)
    if len(collected) < len(clients):
        raise RuntimeError(f"phase {spec.name}: only {len(collected)} of {len(clients)} client processes reported")
    latencies = sorted(latency for result in collected for latency in result.latencies)
    errors: Counter[str] = Counter()
    for result in collected:
        errors.update(result.errors)
    wall = max(r.finished for r in collected) - min(r.started for r in collected)
    cpu, others = _cpu_usage(start, end, sum(r.cpu_seconds for r in collected))
    return PhaseResult(
        spec=spec,
        latencies=latencies,
        errors=errors,
        samples=[sample for result in collected for sample in result.samples][:MAX_ERROR_SAMPLES],
        wall=wall,
        cpu=cpu,
        others=others,
        machine_busy=end.machine_busy - start.machine_busy,
        machine_iowait=end.machine_iowait - start.machine_iowait,
    )


# --- The page: stamp, wording version, audiences ------------------------------------


@dataclass(frozen=True)
class SignupPage:
    ts: str
    wording_version: str
    audience_ids: list[str]
    asks_name: bool
    fetched_at: float


class _FormInputs(HTMLParser):
    """Collects the ``<input>`` elements of a page as (type, name, value) triples."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "input":
            values = {key: value or "" for key, value in attrs}
            self.inputs.append((values.get("type", "text"), values.get("name", ""), values.get("value", "")))


def fetch_signup_page(address: tuple[str, int], common_headers: bytes) -> SignupPage:
    request = b"GET %s HTTP/1.1\r\n%s\r\n" % (SIGNUP_PATH.encode(), common_headers)
    response = _exchange(address, request)
    fetched_at = time.monotonic()
    if not response.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"GET {SIGNUP_PATH} answered {response[:200]!r}")
    parser = _FormInputs()
    parser.feed(response.partition(b"\r\n\r\n")[2].decode("utf-8"))
    fields = {name: value for kind, name, value in parser.inputs if kind == "hidden"}
    audience_ids = [value for kind, name, value in parser.inputs if kind == "checkbox" and name == "audiences"]
    for name in ("ts", "wording_version"):
        if not fields.get(name):
            raise RuntimeError(f"the signup page has no hidden {name!r} field with a value")
    if not audience_ids:
        raise RuntimeError("the signup page offers no audience checkboxes")
    return SignupPage(
        ts=fields["ts"],
        wording_version=fields["wording_version"],
        audience_ids=audience_ids,
        asks_name=any(name == "name" for _, name, _ in parser.inputs),
        fetched_at=fetched_at,
    )


# --- Services: database, Redis, gunicorn ---------------------------------------------


def _run(command: list[str], env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def recreate_database() -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))


def drop_database() -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))


def server_version() -> str:
    with psycopg.connect(PG_ADMIN_URL, connect_timeout=10) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        sync_commit = conn.execute("SHOW synchronous_commit").fetchone()
    return f"PostgreSQL {row[0] if row else '?'} (synchronous_commit={sync_commit[0] if sync_commit else '?'})"


COUNT_QUERIES = {
    "subscribers": "SELECT count(*) FROM audiences_subscriber",
    "subscriptions (pending)": "SELECT count(*) FROM audiences_subscription WHERE status = 'pending'",
    "consent events (requested)": "SELECT count(*) FROM audiences_consentevent WHERE kind = 'requested'",
}
# The queued confirmation emails' table, newest schema first (ConfirmationRequest became ConsumerEmail).
CONFIRMATION_QUERIES = {
    "audiences_consumeremail": (
        "SELECT count(*) FROM audiences_consumeremail WHERE status = 'queued' AND kind = 'confirm'"
    ),
    "audiences_confirmationrequest": "SELECT count(*) FROM audiences_confirmationrequest WHERE status = 'queued'",
}


def count_rows() -> dict[str, int]:
    counts: dict[str, int] = {}
    with psycopg.connect(DATABASE_URL, connect_timeout=10) as conn:
        for label, query in COUNT_QUERIES.items():
            row = conn.execute(query).fetchone()
            counts[label] = int(row[0]) if row else -1
        for table, query in CONFIRMATION_QUERIES.items():
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
            if exists and exists[0]:
                row = conn.execute(query).fetchone()
                counts[f"confirmation emails queued ({table})"] = int(row[0]) if row else -1
                break
        else:
            counts["confirmation emails queued (no known table)"] = 0
    with redis.Redis.from_url(BROKER_URL, socket_timeout=10) as broker:
        counts["confirmation tasks queued in Redis"] = int(broker.llen(CELERY_QUEUE))
    return counts


def flush_redis() -> None:
    for url in (CACHE_URL, BROKER_URL):
        with redis.Redis.from_url(url, socket_timeout=10) as client:
            client.flushdb()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def app_env(
    port: int, var_dir: Path, *, debug: bool, profile_dir: Path | None, profile_clock: str = "wall"
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "ASSENT_"))}
    env.update(
        DATABASE_URL=DATABASE_URL,
        CELERY_BROKER_URL=BROKER_URL,
        REDIS_URL=CACHE_URL,
        EMAIL_URL="smtp://127.0.0.1:1",
        DEBUG="true" if debug else "false",
        ASSENT_VAR_DIR=str(var_dir),
        SITE_URL=f"http://{HOST}:{port}",
        LOG_LEVEL="INFO",
        **SETTINGS,
    )
    if not debug:
        env.update(SECRET_KEY=f"bench-only-{os.urandom(24).hex()}", ALLOWED_HOSTS=HOST, SECURE_SSL_REDIRECT="false")
    for name in ("CELERY_TASK_ALWAYS_EAGER", "TRUSTED_PROXY_COUNT", "DATABASE_CONN_MAX_AGE"):
        env.pop(name, None)
    if profile_dir is not None:
        env["ASSENT_BENCH_PROFILE_DIR"] = str(profile_dir)
        env["ASSENT_BENCH_PROFILE_CLOCK"] = profile_clock
    return env


def gunicorn_command(port: int, workers: int, *, access_log: bool, profile: bool) -> list[str]:
    command = [str(GUNICORN), "config.wsgi", "--bind", f"{HOST}:{port}", "--workers", str(workers)]
    # gunicorn 27's control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl): not ours to take.
    command.append("--no-control-socket")
    if access_log:
        command += ["--access-logfile", "-"]
    if profile:
        command += ["--config", str(PROFILE_HOOKS)]
    return command


def wait_until_serving(proc: subprocess.Popen[bytes], address: tuple[str, int], log: Path) -> None:
    request = b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n" % (
        TRIVIAL_PATH.encode(),
        address[0].encode(),
        address[1],
    )
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if _exchange(address, request).startswith(b"HTTP/1.1 200 "):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer within {BOOT_TIMEOUT:.0f}s:\n{_tail(log)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # gunicorn's graceful shutdown; workers finish their request
        try:
            proc.wait(timeout=35)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def describe_code(app_dir: Path) -> str:
    """The directory benchmarked and, for a git checkout, its commit and uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(app_dir), "log", "-1", "--format=%h %s"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(app_dir), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return str(app_dir)
    if head.returncode != 0:
        return f"{app_dir} (not a git checkout)"
    changed = len(dirty.stdout.splitlines())
    state = f", plus {changed} uncommitted file changes" if changed else ", clean"
    commit = head.stdout.strip()
    commit = commit if len(commit) <= 60 else commit[:57] + "..."
    return f"{app_dir} (commit {commit}{state})"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- Requests --------------------------------------------------------------------------


def common_headers(port: int) -> bytes:
    return (
        f"Host: {HOST}:{port}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
        "Accept-Language: en-GB,en;q=0.7\r\n"
        "Accept-Encoding: identity\r\n"
        "Connection: close\r\n"
    ).encode()


def signup_spec(name: str, count: int, args: argparse.Namespace, port: int, page: SignupPage, run_id: str) -> PhaseSpec:
    headers = common_headers(port)
    origin = f"http://{HOST}:{port}"
    phase_header = b"X-Bench-Phase: signup\r\n" if args.profile and name == "signup" else b""
    head = (
        b"POST %s HTTP/1.1\r\n%s" % (SIGNUP_PATH.encode(), headers)
        + f"Origin: {origin}\r\nReferer: {origin}{SIGNUP_PATH}\r\n".encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\n"
        + phase_header
    )
    after_email = {"name": "Bench Person"} if page.asks_name else {}
    tail = urlencode(
        {
            **after_email,
            "audiences": page.audience_ids[0],
            "ts": page.ts,
            "wording_version": page.wording_version,
            "website": "",
        }
    )
    return PhaseSpec(
        name=name,
        label=f"signup  POST {SIGNUP_PATH}",
        count=count,
        concurrency=args.concurrency,
        timeout=args.phase_timeout,
        head=head,
        expect=b"HTTP/1.1 303 ",
        expect_header=f"\r\nLocation: {THANKS_PATH}\r\n".encode(),
        body_prefix=f"email={quote(f'bench-{run_id}-{name}-')}".encode(),
        body_suffix=f"{quote('@' + EMAIL_DOMAIN)}&{tail}".encode(),
        has_body=True,
    )


def trivial_spec(name: str, count: int, args: argparse.Namespace, port: int) -> PhaseSpec:
    phase_header = b"X-Bench-Phase: trivial\r\n" if args.profile and name == "trivial" else b""
    return PhaseSpec(
        name=name,
        label=f"trivial GET {TRIVIAL_PATH}",
        count=count,
        concurrency=args.concurrency,
        timeout=args.phase_timeout,
        head=b"GET %s HTTP/1.1\r\n%s%s" % (TRIVIAL_PATH.encode(), common_headers(port), phase_header),
        expect=b"HTTP/1.1 200 ",
    )


# --- Report -----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if not math.isnan(seconds) else "-"


def print_results(trivial: PhaseResult, signup: PhaseResult) -> None:
    columns = ("phase", "ok", "errors", "seconds", "req/s", "p50 ms", "p99 ms", "max ms")
    rows = [
        (
            r.spec.label,
            str(r.ok),
            str(r.failed + r.missing),
            f"{r.wall:.2f}",
            f"{r.rate:.1f}",
            _ms(r.percentile(0.50)),
            _ms(r.percentile(0.99)),
            _ms(r.latencies[-1] if r.latencies else math.nan),
        )
        for r in (trivial, signup)
    ]
    widths = [max(len(columns[i]), *(len(row[i]) for row in rows)) for i in range(len(columns))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(columns))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    ratio = signup.rate / trivial.rate if trivial.rate else math.nan
    print()
    print(f"signup rate / trivial rate = {signup.rate:.1f} / {trivial.rate:.1f} = {ratio:.3f}", end="")
    print(f"  (the trivial view is {1 / ratio:.1f}x faster)" if ratio and not math.isnan(ratio) else "")
    for result in (trivial, signup):
        if result.errors or result.missing:
            print(f"\nERRORS in {result.spec.label}:")
            for label, count in result.errors.most_common():
                print(f"  {count:7d}  {label}")
            if result.missing:
                print(f"  {result.missing:7d}  not sent before the phase timeout ({result.spec.timeout:.0f}s)")
            for sample in result.samples:
                print("  --- sample response ---")
                print("  " + sample.replace("\n", "\n  ")[:600])


def _top(values: dict[str, float], count: int) -> list[tuple[str, float]]:
    return sorted(values.items(), key=lambda item: item[1], reverse=True)[:count]


def print_cpu(trivial: PhaseResult, signup: PhaseResult, cores: int) -> None:
    print(f"{'CPU seconds (ms per request)':34}  {'trivial':>16}  {'signup':>16}")
    for group in CPU_GROUPS:
        cells = [f"{r.cpu[group]:7.2f} ({r.cpu[group] / max(1, r.ok) * 1000:5.2f})" for r in (trivial, signup)]
        print(f"{group:34}  {cells[0]:>16}  {cells[1]:>16}")
    for label, attr in (("machine busy", "machine_busy"), ("machine iowait", "machine_iowait")):
        cells = []
        for r in (trivial, signup):
            value = float(getattr(r, attr))
            cells.append(f"{value:7.2f} ({100 * value / (cores * r.wall):3.0f}%)")
        print(f"{label + ' (% of all cores)':34}  {cells[0]:>16}  {cells[1]:>16}")
    ours = [sum(r.cpu[group] for group in CPU_GROUPS[:5]) / max(1, r.ok) for r in (trivial, signup)]
    if all(ours):
        ceilings = [cores / cpu for cpu in ours]
        print(
            f"CPU of the stack and client per request: {ours[0] * 1000:.2f} ms trivial, {ours[1] * 1000:.2f} ms signup;"
            f" if they had all {cores} cores to themselves, about {ceilings[0]:.0f} and {ceilings[1]:.0f} req/s"
            f" (ratio {ceilings[1] / ceilings[0]:.3f}): an estimate that ignores other load and waiting."
        )
    for r in (trivial, signup):
        other = r.cpu[CPU_GROUPS[5]]
        if r.machine_busy > 0 and other > 0.1 * r.machine_busy:
            # Children reaped during the phase bring CPU from before it: name them, without a figure.
            busy = [(name, seconds) for name, seconds in _top(r.others, 8) if seconds >= 0.05]
            running = [f"{name} {seconds:.1f}s" for name, seconds in busy if not name.endswith(CHILDREN)]
            ended = [name.removesuffix(CHILDREN) for name, _ in busy if name.endswith(CHILDREN)]
            named = ", ".join(running[:4] + ([f"processes ended under {', '.join(ended[:4])}"] if ended else []))
            print(
                f"WARNING: during the {r.spec.name} phase {100 * other / r.machine_busy:.0f}% of the busy CPU went to"
                f" other work on this machine ({named or 'short-lived processes'}): rates are lower than on a"
                " quiet machine."
            )


def print_profiles(profile_dir: Path, top: int, clock: str) -> None:
    for phase, sort in (("signup", "cumulative"), ("signup", "tottime"), ("trivial", "tottime")):
        files = sorted(str(p) for p in profile_dir.glob(f"{phase}-*.prof"))
        if not files:
            print(f"(no profile for {phase})")
            continue
        print(f"--- cProfile ({clock} clock) of the gunicorn workers, {phase} phase, top {top} by {sort} ---")
        stats = pstats.Stats(*files, stream=sys.stdout)
        stats.strip_dirs().sort_stats(sort).print_stats(top)


# --- Main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000, help="requests per measured phase (default 3000)")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests per kind (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="client connections (default 8)")
    parser.add_argument("--workers", type=int, default=cores, help=f"gunicorn sync workers (default {cores} = cores)")
    parser.add_argument("--phase-timeout", type=float, default=600.0, help="seconds per phase at most (default 600)")
    parser.add_argument(
        "--app-dir",
        type=Path,
        default=ROOT,
        help="the code to benchmark, e.g. a `git clone --shared` at another commit (default: this checkout)",
    )
    parser.add_argument("--keep-db", action="store_true", help=f"leave the database {DB_NAME} behind")
    parser.add_argument(
        "--debug",
        choices=("true", "false"),
        default="true",
        help="DEBUG setting of the server (default true; false needs collectstatic, done here)",
    )
    parser.add_argument("--access-log", action="store_true", help="gunicorn access log on, as in the Procfile")
    parser.add_argument(
        "--profile",
        choices=("wall", "cpu"),
        help="cProfile the workers during the measured phases, timing by wall-clock or CPU time (distorts the rates)",
    )
    parser.add_argument(
        "--profile-dir", type=Path, help="keep the workers' .prof files in this directory (default: discarded)"
    )
    parser.add_argument("--profile-top", type=int, default=25, help="profile lines to print (default 25)")
    parser.add_argument("--max-error-percent", type=float, default=1.0, help="fail above this (default 1)")
    args = parser.parse_args(argv)
    for name, low, high in (
        ("requests", 1, 1_000_000),
        ("warmup", 0, 100_000),
        ("concurrency", 1, 256),
        ("workers", 1, 64),
        ("profile_top", 1, 500),
    ):
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name.replace('_', '-')} must be between {low} and {high}")
    if not 1 <= args.phase_timeout <= 3600:
        parser.error("--phase-timeout must be between 1 and 3600 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    debug = args.debug == "true"
    app_dir = args.app_dir.resolve()
    if not (app_dir / "manage.py").is_file():
        print(f"{app_dir} has no manage.py", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    run_id = f"{int(time.time())}{os.getpid() % 1000:03d}"
    tmp = Path(tempfile.mkdtemp(prefix="assent-bench-"))
    log = tmp / "gunicorn.log"
    profile_dir = (args.profile_dir or tmp / "profiles").resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = (HOST, port)
    env = app_env(port, tmp / "var", debug=debug, profile_dir=profile_dir, profile_clock=args.profile or "wall")
    command = gunicorn_command(port, args.workers, access_log=args.access_log, profile=bool(args.profile))
    proc: subprocess.Popen[bytes] | None = None
    failures: list[str] = []
    try:
        print(f"Preparing: database {DB_NAME}, Redis dbs 12 and 13, gunicorn on {HOST}:{port} ...", flush=True)
        flush_redis()
        recreate_database()
        _run([str(PYTHON), "manage.py", "migrate", "--noinput", "-v0"], env, app_dir)
        _run([str(PYTHON), "manage.py", "seed_demo"], env, app_dir)
        if not debug:
            _run([str(PYTHON), "manage.py", "collectstatic", "--noinput", "-v0"], env, app_dir)
        with log.open("wb") as log_file:
            proc = subprocess.Popen(command, cwd=app_dir, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        wait_until_serving(proc, address, log)

        page = fetch_signup_page(address, common_headers(port))
        pause = page.fetched_at + MIN_FILL_SECONDS + 0.5 - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # the stamp must be older than SIGNUP_MIN_FILL_SECONDS

        warm = [
            signup_spec("warmup", args.warmup, args, port, page, run_id),
            trivial_spec("warmup", args.warmup, args, port),
        ]
        warm_results = [run_phase(spec, address, proc.pid) for spec in warm if spec.count]
        for result in warm_results:
            wrong = result.failed + result.missing
            if wrong:
                print(f"warm-up {result.spec.label}: {wrong} failed: {dict(result.errors)}", file=sys.stderr)
            if wrong * 100 > args.max_error_percent * result.spec.count:
                print(f"--- gunicorn log (last lines) ---\n{_tail(log, 60)}", file=sys.stderr)
                print(f"\nFAILED during warm-up ({result.spec.label}), not measuring.", file=sys.stderr)
                return 1
        trivial = run_phase(trivial_spec("trivial", args.requests, args, port), address, proc.pid)
        before = count_rows()
        signup = run_phase(signup_spec("signup", args.requests, args, port, page, run_id), address, proc.pid)
        after = count_rows()
        if proc.poll() is not None:
            failures.append(f"gunicorn exited during the run with {proc.returncode}")
        stop(proc)  # workers exit now: their profiles get written
        if any(r.failed for r in (*warm_results, trivial, signup)):
            print(f"--- gunicorn log (last lines) ---\n{_tail(log, 60)}", file=sys.stderr)

        print()
        print(f"Assent signup benchmark ({time.strftime('%Y-%m-%d %H:%M:%S %Z')}, run {run_id})")
        print("=" * 78)
        print("Setup")
        print(
            f"  machine   {cores} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
        )
        print(f"  code      {describe_code(app_dir)}")
        print(f"  server    {' '.join(command[1:])}  (gunicorn sync workers, same machine)")
        print(f"  database  {server_version()} on 127.0.0.1:5432, database {DB_NAME} (fresh: migrate + seed_demo)")
        print(f"  redis     cache {CACHE_URL}, Celery broker {BROKER_URL} (no worker: tasks queue up, no mail)")
        print(
            f"  client    {args.concurrency} connections, one process each, raw sockets, new TCP connection per"
            " request (sync workers close after each response); same machine"
        )
        print(
            f"  requests  {args.requests} per measured phase after {args.warmup} warm-up requests of each kind;"
            f" signups tick 1 of {len(page.audience_ids)} audiences, unique address each"
        )
        print("Settings (anti-abuse limits raised so the accepted path is measured, not the refusal path)")
        print(f"  DEBUG={args.debug}  " + "  ".join(f"{k}={v}" for k, v in SETTINGS.items()))
        print(f"  DATABASE_CONN_MAX_AGE=60 (default)  EMAIL_URL={env['EMAIL_URL']} (never contacted)")
        if args.profile:
            print(
                f"  PROFILED RUN: cProfile ({args.profile} clock) is on in the workers during the measured phases;"
                " the rates are distorted."
            )
        print()
        print_results(trivial, signup)
        print()
        print(f"Work done by the measured signup phase ({signup.ok} signups answered 303 -> thanks)")
        width = max(len(label) for label in after)
        for label, value in after.items():
            delta = value - before[label]
            verdict = "ok" if delta == signup.ok else "MISMATCH"
            print(f"  {label:{width}}  +{delta:<7d} (expected +{signup.ok}) {verdict}")
            if delta != signup.ok:
                failures.append(f"{label}: +{delta}, expected +{signup.ok}")
        if any(value - before[label] != signup.ok for label, value in after.items()):
            print(
                "  Refused signups get the same neutral 303 as accepted ones: fewer rows mean refusals"
                " (rate limit, fill time, honeypot) or lost work. The server log says which:"
            )
            refusals = [line for line in _tail(log, 400).splitlines() if "refused" in line]
            print("  " + "\n  ".join(refusals[-5:] or ["(no refusal logged)"]))
        print()
        print_cpu(trivial, signup, cores)
        if profile_dir is not None:
            print()
            print_profiles(profile_dir, args.profile_top, args.profile)

        for result in (trivial, signup):
            wrong = result.failed + result.missing
            if wrong * 100 > args.max_error_percent * result.spec.count:
                failures.append(f"{result.spec.label}: {wrong} of {result.spec.count} requests failed")
    except Exception:
        if proc is not None:
            print(f"--- gunicorn log (last lines) ---\n{_tail(log)}", file=sys.stderr)
        raise
    finally:
        if proc is not None:
            stop(proc)
        try:
            flush_redis()
        finally:
            if not args.keep_db:
                drop_database()
            shutil.rmtree(tmp, ignore_errors=True)
    if args.keep_db:
        print(f"\nDatabase {DB_NAME} kept (DATABASE_URL={DATABASE_URL}).")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; gunicorn stopped, Redis flushed, database dropped unless --keep-db", file=sys.stderr)
        sys.exit(130)
