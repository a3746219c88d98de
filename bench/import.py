"""CSV import throughput and memory: rows per second and peak RSS at 100,000 and 1,000,000 rows (issue #4).

What it measures
    ``audiences.imports.run``, the operation behind the ``run_import`` task,
    called in-process (no broker, no worker) on PostgreSQL, for a generated
    file of N rows with the per-row confirmation-time basis into two audiences.
    Each size runs in a fresh child process so its memory figures are its own:

    - upload: ``imports.create`` storing and reading the file once (encoding,
      delimiter, header, row count, sha256), as the upload view does;
    - import: ``imports.run`` from claim to done, in chunks of ``CHUNK_ROWS``;
      rows/s is file rows over this wall time;
    - RSS: the process's resident memory sampled every 20 ms during the import
      (psutil), its peak minus the baseline just before, and the kernel's
      ``ru_maxrss`` for the whole child. Flat memory means these do not grow
      with N;
    - ``--rerun``: the same file imported again as a new job, which must write
      nothing (the idempotent path: every row "unchanged" or skipped again).

    The file mixes what real lists hold: about 93% rows with an ISO 8601
    confirmation time, 4% with none (imported as pending), 1% invalid
    addresses, 1% repeats of an earlier row (across chunks), 1% suppressed
    addresses (suppressions created beforehand) and 2 attribute columns. The
    output lists the job's counts and checks them against the database.

How to run it
    PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth). From the repository root::

        .venv/bin/python bench/import.py [--rows 100000 1000000] [--rerun] [--keep-db]

    It (re)creates the database ``assent_import_bench`` (dropped at the end
    unless ``--keep-db``) and writes the CSV files and uploads to a temporary
    directory that is removed afterwards. It needs no Redis and sends no mail.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_NAME = "assent_import_bench"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
SAMPLE_SECONDS = 0.02
CHILD_TIMEOUT = 3600
LANGUAGES = ["en", "de", "", "EN", "de-AT"]
PLANS = ["free", "plus", "pro", ""]
CITIES = ["Bristol", "Berlin", "Leeds", "Köln", ""]


# --- Parent: database, children, table --------------------------------------------


def _admin(statement: sql.Composable) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


def _env(workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": "memory://",
        "REDIS_URL": "",
        "EMAIL_URL": "smtp://127.0.0.1:1",
        # Production settings, as a worker runs them (with DEBUG on, Django also logs every query).
        "DEBUG": "false",
        "SECRET_KEY": "bench-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz",
        "ALLOWED_HOSTS": "localhost",
        "SITE_URL": "https://bench.example",
        "ASSENT_VAR_DIR": str(workdir / "var"),
        "LOG_LEVEL": "WARNING",
    }


def _run_child(rows: int, rerun: bool, workdir: Path) -> dict[str, Any]:
    command = [str(PYTHON), __file__, "--child", str(rows), "--workdir", str(workdir)]
    if rerun:
        command.append("--rerun")
    done = subprocess.run(command, cwd=ROOT, env=_env(workdir), capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    if done.returncode != 0:
        sys.exit(f"the {rows}-row run failed:\n{done.stdout}\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _mb(value: float) -> str:
    return f"{value / 1024 / 1024:,.1f} MB"


def _report(results: list[dict[str, Any]]) -> None:
    print(f"\nPython {sys.version.split()[0]}, {psutil.cpu_count()} cores, PostgreSQL on 127.0.0.1, in-process import")
    print(f"{'rows':>10} {'file':>9} {'upload s':>9} {'import s':>9} {'rows/s':>8} {'peak RSS':>11} {'growth':>10}")
    for r in results:
        for label, run in (("", r["import"]), (" (rerun)", r.get("rerun"))):
            if run is None:
                continue
            print(
                f"{r['rows']:>10,} {_mb(r['file_bytes']):>9} {run['upload_seconds']:>9.1f} "
                f"{run['seconds']:>9.1f} {run['rows_per_second']:>8,.0f} {_mb(run['peak_rss']):>11} "
                f"{_mb(run['peak_rss'] - run['baseline_rss']):>10}{label}"
            )
    for r in results:
        print(f"\n{r['rows']:,} rows: counts {r['import']['counts']}")
        print(f"  ru_maxrss of the whole child: {_mb(r['ru_maxrss'])}; database check: {r['check']}")
        if r.get("rerun"):
            print(f"  rerun counts {r['rerun']['counts']}; rows written by the rerun: {r['rerun']['written']}")


def parent(args: argparse.Namespace) -> None:
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
    try:
        with tempfile.TemporaryDirectory(prefix="assent-import-bench-") as tmp:
            workdir = Path(tmp)
            subprocess.run(
                [str(PYTHON), "manage.py", "migrate", "--noinput", "-v0"],
                cwd=ROOT,
                env=_env(workdir),
                check=True,
                timeout=CHILD_TIMEOUT,
            )
            results = []
            for rows in args.rows:
                print(f"importing {rows:,} rows ...", flush=True)
                results.append(_run_child(rows, args.rerun, workdir))
            _report(results)
    finally:
        if not args.keep_db:
            _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))


# --- Child: one size, in its own process ------------------------------------------


def _generate(path: Path, rows: int, tag: str, rng: random.Random) -> list[str]:
    """Write the CSV file row by row (never held in memory); return the addresses to suppress."""
    suppress: list[str] = []
    start = datetime(2022, 1, 1, tzinfo=UTC)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,name,language,confirmed_at,plan,city\n")
        for i in range(rows):
            roll = rng.random()
            email = f"person.{tag}.{i}@example{i % 97}.com"
            if roll < 0.01:
                email = f"not an address {i}"
            elif roll < 0.02 and i > 5000:
                email = f"person.{tag}.{i - 5000}@example{(i - 5000) % 97}.com"  # a repeat, chunks apart
            elif roll < 0.03:
                suppress.append(email)
            when = "" if rng.random() < 0.04 else (start + timedelta(minutes=i)).isoformat()
            name = f"Person {i}"
            out.write(f"{email},{name},{rng.choice(LANGUAGES)},{when},{rng.choice(PLANS)},{rng.choice(CITIES)}\n")
    return suppress


class _Sampler(threading.Thread):
    """The process's peak resident memory, sampled while the import runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, self.process.memory_info().rss)


def _timed_run(job_id: int, rows: int) -> dict[str, Any]:
    import gc

    from audiences import imports
    from audiences.models import ImportJob

    gc.collect()
    sampler = _Sampler()
    baseline = sampler.peak
    sampler.start()
    began = time.perf_counter()
    outcome = imports.run(job_id=job_id)
    seconds = time.perf_counter() - began
    sampler.stopped.set()
    sampler.join()
    job = ImportJob.objects.get(pk=job_id)
    if outcome != "done" or job.status != ImportJob.Status.DONE:
        raise SystemExit(f"import {job_id} ended {outcome!r} / {job.status}: {job.error}")
    return {
        "seconds": seconds,
        "rows_per_second": rows / seconds,
        "baseline_rss": baseline,
        "peak_rss": sampler.peak,
        "counts": {k: v for k, v in job.counts.items() if v},
    }


def _row_counts(brand_id: int) -> dict[str, int]:
    from audiences.models import ConsentEvent, ImportIssue, Subscriber, Subscription

    return {
        "subscribers": Subscriber.objects.filter(brand_id=brand_id).count(),
        "subscriptions": Subscription.objects.filter(subscriber__brand_id=brand_id).count(),
        "events": ConsentEvent.objects.filter(brand_id=brand_id).count(),
        "issues": ImportIssue.objects.filter(job__brand_id=brand_id).count(),
    }


def _import(brand: Any, user: Any, audiences: list[Any], path: Path) -> tuple[int, float]:
    from django.core.files import File

    from audiences import imports

    began = time.perf_counter()
    with path.open("rb") as handle:
        job = imports.create(brand=brand, user=user, upload=File(handle, name="bench.csv"))
    upload_seconds = time.perf_counter() - began
    imports.start(
        job=job,
        user=user,
        mapping=imports.Mapping(email=0, name=1, language=2, confirmed_at=3, attributes=(4, 5)),
        audiences=audiences,
        basis="column",
        consent_source="Checkout newsletter box, shop.example.com, 2022 to 2024",
    )
    return job.pk, upload_seconds


def child(args: argparse.Namespace) -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    django.setup()
    from django.contrib.auth.models import User

    from audiences import team
    from audiences.models import Audience, Suppression, email_hash

    rows = args.child
    tag = f"n{rows}"
    rng = random.Random(rows)  # reproducible test data
    path = Path(args.workdir) / f"{tag}.csv"
    suppress = _generate(path, rows, tag, rng)
    user = User.objects.create_user(username=f"{tag}@bench.example", email=f"{tag}@bench.example")
    brand = team.create_brand(name=f"Bench {tag}", slug=f"bench-{tag}", owner=user, from_email="news@bench.example")
    audiences = [Audience.objects.create(brand=brand, name=name) for name in ("News", "Offers")]
    Suppression.objects.bulk_create(
        [Suppression(brand=brand, email_hash=email_hash(e), reason="complaint") for e in suppress], batch_size=5000
    )

    job_id, upload_seconds = _import(brand, user, audiences, path)
    result: dict[str, Any] = {
        "rows": rows,
        "file_bytes": path.stat().st_size,
        "import": {**_timed_run(job_id, rows), "upload_seconds": upload_seconds},
    }
    written = _row_counts(brand.pk)
    counts = result["import"]["counts"]
    expected = counts.get("created", 0)
    result["check"] = (
        f"{written['subscribers']:,} subscribers (created {expected:,}), {written['subscriptions']:,} subscriptions, "
        f"{written['events']:,} consent events, {written['issues']:,} report rows"
    )
    if written["subscribers"] != expected or written["events"] != expected:
        raise SystemExit(f"database does not match the counts: {result['check']}")
    if args.rerun:
        again_id, upload_seconds = _import(brand, user, audiences, path)
        result["rerun"] = {**_timed_run(again_id, rows), "upload_seconds": upload_seconds}
        after = _row_counts(brand.pk)
        result["rerun"]["written"] = {k: after[k] - written[k] for k in after if k != "issues"}
    result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="file sizes to import")
    parser.add_argument("--rerun", action="store_true", help="import each file a second time (idempotent path)")
    parser.add_argument("--keep-db", action="store_true", help=f"keep the {DB_NAME} database afterwards")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
