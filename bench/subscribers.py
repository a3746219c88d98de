"""Subscriber list pages and the CSV export at a million subscribers (issue #4).

What it measures
    The dashboard's subscriber list, ``GET /b/big/subscribers/``, called
    directly as a view (``RequestFactory`` + a signed-in owner, through
    ``brand_view`` and the template, no middleware or HTTP server) against
    PostgreSQL, for: the first page, a deep page (the cursor followed 100 pages
    down), status filters, audience filters (a large and a tiny audience), a
    signup-date range, a source filter, an email search (a prefix of an
    address), name substring searches (common and rare), and a search combined
    with a filter. Each case runs ``--requests`` times after 3 warm-up calls;
    the table gives the median and p95 wall time per page, the rows on the page
    and the queries per request. Then one subscriber's detail page, and the
    CSV export of the whole big brand: rows per second and how much the
    process's resident memory grew while streaming it (flat means the export
    does not hold the rows).

    Brand ``big`` holds ``--subscribers`` people (default 1,000,000) and brand
    ``small`` ``--others`` (default 100,000), so every query must pick one
    brand's rows out of a shared table. Statuses, sources, audiences and
    signup times are spread deterministically (about 75% confirmed, 10%
    pending, 13% unsubscribed, 2% blocked; a tenth of the signups share their
    timestamp with others, as imports do); each person has their consent
    events (requested, confirmed, unsubscribed or blocked).

    The indexes proposed for the list (``PROPOSED_INDEXES``: a keyset index on
    (brand, created_at, id) and trigram indexes for the substring search) are
    created after seeding unless ``--without-proposed-indexes`` is given,
    which shows what they are for. ``--explain`` prints PostgreSQL's
    ``EXPLAIN (ANALYZE, BUFFERS)`` of each case's page query.

How to run it
    PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) must be running.
    From the repository root::

        .venv/bin/python bench/subscribers.py [--subscribers N] [--others N] [--requests N]
                                              [--explain] [--skip-export] [--reseed]
                                              [--without-proposed-indexes]

    The first run creates the database ``assent_subs_bench`` with ``manage.py
    migrate`` and seeds it set-based (``INSERT ... SELECT generate_series``;
    about two minutes for 1.1M people on 2 cores). Later runs reuse it when it
    holds the requested numbers; ``--reseed`` starts over. It touches no other
    database; Redis is not used (no task is queued).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "assent_subs_bench"
PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DB_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
BIG, SMALL = "big", "small"
WARMUP = 3
DEEP_PAGES = 100
TARGET_MS = 200.0

# What the list needs beyond the model's indexes; the migration should create exactly these.
PROPOSED_INDEXES = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS subscriber_brand_created ON audiences_subscriber (brand_id, created_at, id)",
    "CREATE INDEX IF NOT EXISTS subscriber_email_trgm ON audiences_subscriber USING gin (email gin_trgm_ops)",
    "CREATE INDEX IF NOT EXISTS subscriber_name_trgm"
    " ON audiences_subscriber USING gin (upper(name::text) gin_trgm_ops)",
]
PROPOSED_INDEX_NAMES = ["subscriber_brand_created", "subscriber_email_trgm", "subscriber_name_trgm"]

FIRST_NAMES = [
    "Anna",
    "Ben",
    "Chloe",
    "David",
    "Emma",
    "Felix",
    "Greta",
    "Hugo",
    "Ida",
    "Jonas",
    "Klara",
    "Leon",
    "Mia",
    "Noah",
    "Olga",
    "Paul",
    "Quinn",
    "Rosa",
    "Sven",
    "Tara",
    "Uwe",
    "Vera",
    "Walter",
    "Xenia",
    "Yusuf",
    "Zoe",
    "Amir",
    "Bea",
    "Carl",
    "Dana",
    "Elif",
    "Fox",
    "Gina",
    "Hana",
    "Igor",
    "Jana",
    "Kofi",
    "Lena",
    "Marta",
    "Nils",
]
LAST_NAMES = [
    "Smith",
    "Jones",
    "Brown",
    "Taylor",
    "Wilson",
    "Davies",
    "Evans",
    "Thomas",
    "Roberts",
    "Walker",
    "Wright",
    "Green",
    "Hall",
    "Wood",
    "Harris",
    "Clarke",
    "Jackson",
    "Turner",
    "Hill",
    "Moore",
    "Cooper",
    "Ward",
    "King",
    "Baker",
    "Scully",
    "Mulder",
    "Lee",
    "Martin",
    "Allen",
    "Young",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
    "Koch",
    "Richter",
    "Klein",
    "Wolf",
    "Neumann",
    "Schwarz",
    "Braun",
    "Zimmermann",
    "Kruger",
    "Hartmann",
    "Lange",
    "Werner",
    "Krause",
    "Lehmann",
]
ADDRESS_FACTOR = 7919  # a prime: g * 7919 mod n is a permutation of 0..n-1 unless n is a multiple
RARE_NAME = "Xanthippe Quarendon"  # every 100,000th person: a name search with a handful of hits


def _pg_array(words: list[str]) -> str:
    return "ARRAY[" + ",".join(f"'{w}'" for w in words) + "]"


# One statement per table, all set-based. ``r1``..``r4`` are deterministic pseudo-random
# numbers in [0, 1) per person and purpose (from hashint8), so every run seeds the same data.
# The f-string only splices in the constants above, never input.
SEED_SUBSCRIBERS = f"""
INSERT INTO audiences_subscriber
    (brand_id, email, email_hash, name, language, attributes, status, frequency, source, token_secret,
     created_at, confirmed_at, unsubscribed_at, blocked_at)
SELECT %(brand)s, t.email, encode(sha256(convert_to(t.email, 'UTF8')), 'hex'),
       CASE WHEN t.g %% 100000 = 7 THEN '{RARE_NAME}'
            ELSE ({_pg_array(FIRST_NAMES)})[1 + abs(hashint8(t.g::bigint + 5000000000)) %% {len(FIRST_NAMES)}]
                 || ' ' || ({_pg_array(LAST_NAMES)})[1 + abs(hashint8(t.g::bigint + 6000000000)) %% {len(LAST_NAMES)}]
       END,
       CASE WHEN t.g %% 5 = 0 THEN 'de' ELSE 'en' END,
       jsonb_build_object('customer_no', t.g, 'plan', CASE WHEN t.r2 < 0.2 THEN 'gold' ELSE 'basic' END),
       t.status, 'published', t.source, md5(t.g::text || %(brand)s::text), t.created,
       CASE WHEN t.status IN ('confirmed', 'unsubscribed') THEN t.created + interval '7 minutes' END,
       CASE WHEN t.status = 'unsubscribed' THEN t.created + interval '40 days' END,
       CASE WHEN t.status = 'blocked' THEN t.created + interval '12 days' END
FROM (
    -- The number in the address is a permutation of g (ADDRESS_FACTOR is prime to n): unique, and not in
    -- signup order, as real addresses are not.
    SELECT s.g,
           'user' || (s.g::bigint * {ADDRESS_FACTOR}) %% %(n)s || '@'
               || (ARRAY['example.com', 'mail.example', 'post.example', 'inbox.example'])[1 + s.g %% 4] AS email,
           s.r2,
           CASE WHEN s.r1 < 0.75 THEN 'confirmed' WHEN s.r1 < 0.85 THEN 'pending'
                WHEN s.r1 < 0.98 THEN 'unsubscribed' ELSE 'blocked' END AS status,
           CASE WHEN s.r3 < 0.70 THEN 'form' WHEN s.r3 < 0.85 THEN 'embed'
                WHEN s.r3 < 0.95 THEN 'api' ELSE 'import' END AS source,
           -- Three years, oldest first; a tenth share their (hourly) timestamp, as imports do.
           CASE WHEN s.r4 < 0.1 THEN date_trunc('hour', s.at) ELSE s.at END AS created
    FROM (
        SELECT g,
               (hashint8(g::bigint) & 1048575) / 1048576.0 AS r1,
               (hashint8(g::bigint + 1000000000) & 1048575) / 1048576.0 AS r2,
               (hashint8(g::bigint + 2000000000) & 1048575) / 1048576.0 AS r3,
               (hashint8(g::bigint + 3000000000) & 1048575) / 1048576.0 AS r4,
               now() - interval '3 years' + (g::float8 / %(n)s) * interval '3 years'
                   + ((hashint8(g::bigint + 4000000000) & 1023) / 1024.0) * interval '1 hour' AS at
        FROM generate_series(1, %(n)s) AS g
    ) AS s
) AS t
"""  # noqa: S608

# Audience membership from the subscriber id: news ~70%, offers ~35%, rare 0.1%; everyone in one at least.
SEED_SUBSCRIPTIONS = """
INSERT INTO audiences_subscription (subscriber_id, audience_id, status, source, requested_at, confirmed_at, ended_at)
SELECT s.id, a.audience_id,
       CASE s.status WHEN 'confirmed' THEN 'active' WHEN 'pending' THEN 'pending' ELSE 'inactive' END,
       s.source, s.created_at, s.confirmed_at, coalesce(s.unsubscribed_at, s.blocked_at)
FROM audiences_subscriber s
CROSS JOIN LATERAL (
    SELECT %(news)s AS audience_id WHERE s.id %% 10 < 7 OR s.id %% 20 >= 7
    UNION ALL SELECT %(offers)s WHERE s.id %% 20 < 7
    UNION ALL SELECT %(rare)s WHERE s.id %% 1000 = 0
) AS a
WHERE s.brand_id = %(brand)s
"""

SEED_EVENTS = """
INSERT INTO audiences_consentevent
    (brand_id, subscriber_id, kind, created_at, actor, source, ip, user_agent, signup_form_id, wording_id,
     wording_text, audiences, details)
SELECT s.brand_id, s.id, e.kind, e.at, e.actor, e.source, e.ip::inet, e.ua, e.form_id, e.wording_id,
       e.wording_text, '[]'::jsonb, e.details
FROM audiences_subscriber s
CROSS JOIN LATERAL (
    SELECT 'requested' AS kind, s.created_at AS at, 'consumer' AS actor, s.source,
           '198.51.' || (s.id %% 250) || '.' || (s.id %% 199) AS ip, 'Mozilla/5.0 (bench) Firefox/126.0' AS ua,
           %(form)s AS form_id, %(wording)s AS wording_id, %(wording_text)s AS wording_text,
           '{"wording_version": 1}'::jsonb AS details
    UNION ALL
    SELECT 'confirmed', s.confirmed_at, 'consumer', 'email_link', '203.0.' || (s.id %% 250) || '.9',
           'Mozilla/5.0 (bench) Safari/17.4', NULL, NULL, '', '{}'::jsonb
    WHERE s.confirmed_at IS NOT NULL
    UNION ALL
    SELECT 'unsubscribed', s.unsubscribed_at, 'consumer', 'one_click', NULL, '', NULL, NULL, '',
           '{"scope": "all"}'::jsonb
    WHERE s.unsubscribed_at IS NOT NULL
    UNION ALL
    SELECT 'blocked', s.blocked_at, 'provider', 'webhook', NULL, '', NULL, NULL, '', '{"reason": "complaint"}'::jsonb
    WHERE s.blocked_at IS NOT NULL
) AS e
WHERE s.brand_id = %(brand)s
"""


@dataclass(frozen=True)
class Case:
    label: str
    params: dict[str, str]
    # False: shown for what it costs, not held to TARGET_MS (see the case's comment).
    target: bool = True


@dataclass(frozen=True)
class Result:
    case: Case
    median_ms: float
    p95_ms: float
    rows: int
    queries: int


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def _database_exists() -> bool:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone() is not None


def recreate_database(env: dict[str, str]) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
    _run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], env)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": DB_URL,
        # Not used by these views (nothing is queued), but never the developer's own databases.
        "REDIS_URL": "redis://127.0.0.1:6379/6",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/7",
        "EMAIL_URL": "smtp://127.0.0.1:1",
        "DEBUG": "true",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django
    from django.conf import settings

    django.setup()
    # DEBUG=true spares us production-only settings; turning it off here stops Django logging every query.
    settings.DEBUG = False


def seeded_counts() -> dict[str, int]:
    from django.db.models import Count

    from audiences.models import Subscriber

    rows = Subscriber.objects.values_list("brand__slug").annotate(n=Count("id"))
    return {str(slug): n for slug, n in rows}


def seed(big: int, small: int) -> None:
    """Brands, audiences and forms through the real operations; people set-based."""
    from django.contrib.auth.models import User
    from django.db import connection

    from audiences.models import Audience, Brand, Membership
    from audiences.signup_forms import create_form

    owner = User.objects.create_user(username="owner@big.example", email="owner@big.example")
    for slug, n in ((BIG, big), (SMALL, small)):
        brand = Brand.objects.create(name=slug.title(), slug=slug, from_name=slug, from_email=f"news@{slug}.example")
        Membership.objects.create(user=owner, brand=brand, role=Membership.Role.OWNER)
        news = Audience.objects.create(brand=brand, name="Weekly news")
        offers = Audience.objects.create(brand=brand, name="Offers")
        rare = Audience.objects.create(brand=brand, name="Beta testers")
        form = create_form(
            brand=brand, slug="join", title=f"Join {brand.name}", audiences=[news, offers], wording="Yes, email me."
        )
        wording = form.current_wording()
        started = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute(SEED_SUBSCRIBERS, {"brand": brand.pk, "n": n})
            cursor.execute(
                SEED_SUBSCRIPTIONS, {"brand": brand.pk, "news": news.pk, "offers": offers.pk, "rare": rare.pk}
            )
            cursor.execute(
                SEED_EVENTS,
                {"brand": brand.pk, "form": form.pk, "wording": wording.pk, "wording_text": wording.text},
            )
        print(f"  seeded {n:>9,} people for brand {slug} in {time.monotonic() - started:.0f} s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def set_proposed_indexes(*, present: bool) -> None:
    from django.db import connection

    started = time.monotonic()
    with connection.cursor() as cursor:
        if present:
            for statement in PROPOSED_INDEXES:
                cursor.execute(statement)
        else:
            for name in PROPOSED_INDEX_NAMES:
                cursor.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)).as_string(None))
        cursor.execute("ANALYZE audiences_subscriber")
    print(f"  proposed indexes {'present' if present else 'dropped'} ({time.monotonic() - started:.0f} s)")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    """Calls the views in-process as the big brand's owner."""

    def __init__(self) -> None:
        from django.contrib.auth.models import User
        from django.test import RequestFactory

        self.factory = RequestFactory()
        self.user = User.objects.get(username="owner@big.example")

    def get(self, view: Callable[..., Any], path: str, params: dict[str, str], **kwargs: Any) -> Any:
        request = self.factory.get(path, params)
        request.user = self.user
        response = view(request, brand_slug=BIG, **kwargs)
        if response.status_code != 200:
            raise RuntimeError(f"{path} {params} answered {response.status_code}")
        return response

    def list_page(self, params: dict[str, str]) -> Any:
        from audiences.views.dashboard import subscribers

        return self.get(subscribers.subscriber_list, "/b/big/subscribers/", params)

    def measure(self, case: Case, requests: int) -> Result:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        for _ in range(WARMUP):
            response = self.list_page(case.params)
        timings = []
        for _ in range(requests):
            started = time.perf_counter()
            response = self.list_page(case.params)
            timings.append((time.perf_counter() - started) * 1000)
        with CaptureQueriesContext(connection) as captured:
            response = self.list_page(case.params)
        rows = response.content.count(b'<td><a href="/b/big/subscribers/')
        return Result(case, statistics.median(timings), _percentile(timings, 0.95), rows, len(captured))

    def deep_cursor(self, pages: int) -> str:
        """Follow "Older" ``pages`` times from the first page; the cursor of the page after."""
        from audiences.models import Brand
        from audiences.subscriber_queries import Cursor, Filters, filtered, page

        queryset = filtered(brand=Brand.objects.get(slug=BIG), filters=Filters())
        cursor: Cursor | None = None
        for _ in range(pages):
            cursor = page(queryset, after=cursor).older
            assert cursor is not None, "not enough subscribers for the deep page"
        assert cursor is not None
        return cursor.encode()


def cases(bench: Bench) -> list[Case]:
    from datetime import timedelta

    from django.utils import timezone

    from audiences.models import Audience, Subscriber

    news = Audience.objects.get(brand__slug=BIG, name="Weekly news")
    rare = Audience.objects.get(brand__slug=BIG, name="Beta testers")
    someone = Subscriber.objects.filter(brand__slug=BIG).order_by("pk")[1000]
    mid = timezone.localdate() - timedelta(days=500)
    return [
        Case("first page", {}),
        Case(f"deep page ({DEEP_PAGES} pages down)", {"after": bench.deep_cursor(DEEP_PAGES)}),
        Case("status: pending (10%)", {"status": "pending"}),
        Case("status: blocked (2%)", {"status": "blocked"}),
        Case("audience: Weekly news (~70%)", {"audience": str(news.pk)}),
        Case("audience: Beta testers (0.1%)", {"audience": str(rare.pk)}),
        Case("signup dates: one month", {"created_from": str(mid), "created_to": str(mid + timedelta(days=30))}),
        Case("source: import (5%)", {"source": "import"}),
        Case("email prefix: user12345", {"q": "user12345"}),
        Case("email, exact address", {"q": someone.email}),
        Case("name substring: mulder (2%)", {"q": "mulder"}),
        Case("name substring: thipp (rare)", {"q": "thipp"}),
        Case("search + status: scully, blocked", {"q": "scully", "status": "blocked"}),
        # The worst case: nobody unsubscribed has an active subscription, so no row matches and
        # PostgreSQL checks every unsubscribed person of the brand (~13%) before it knows.
        Case("no match: Weekly news + unsubscribed", {"audience": str(news.pk), "status": "unsubscribed"}, False),
    ]


def explain(case: Case) -> str:
    """PostgreSQL's plan, with timings, for the case's page query."""
    from audiences.models import Audience, Brand
    from audiences.subscriber_queries import PAGE_SIZE, _older_than, filtered
    from audiences.views.dashboard.subscribers import FilterForm

    brand = Brand.objects.get(slug=BIG)
    form = FilterForm(case.params, audiences=Audience.objects.filter(brand=brand))
    assert form.is_valid(), form.errors
    queryset = filtered(brand=brand, filters=form.filters()).order_by("-created_at", "-pk")
    if form.cleaned_data["after"]:
        queryset = queryset.filter(_older_than(form.cleaned_data["after"]))
    return queryset[: PAGE_SIZE + 1].explain(analyze=True, buffers=True)


def measure_detail(bench: Bench, requests: int) -> tuple[float, float]:
    from audiences.models import Subscriber
    from audiences.views.dashboard import subscribers

    person = Subscriber.objects.filter(brand__slug=BIG, status="unsubscribed").order_by("pk").first()
    assert person is not None
    path = f"/b/big/subscribers/{person.pk}/"
    timings = []
    for index in range(WARMUP + requests):
        started = time.perf_counter()
        bench.get(subscribers.subscriber_detail, path, {}, pk=person.pk)
        if index >= WARMUP:
            timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings), _percentile(timings, 0.95)


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_export(bench: Bench) -> tuple[int, float, float, float, float]:
    """(rows, seconds, time to first byte, RSS at start in MB, largest RSS growth in MB)."""
    from audiences.views.dashboard import subscribers

    start_rss = _rss_mb()
    peak = start_rss
    started = time.perf_counter()
    response = bench.get(subscribers.subscriber_export, "/b/big/subscribers/export.csv", {})
    lines = 0
    first_byte = 0.0
    for _line in response.streaming_content:
        if not lines:
            first_byte = time.perf_counter() - started
        lines += 1
        if lines % 20000 == 0:
            peak = max(peak, _rss_mb())
    peak = max(peak, _rss_mb())
    return lines - 1, time.perf_counter() - started, first_byte, start_rss, peak - start_rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--subscribers", type=int, default=1_000_000, help="people in brand 'big'")
    parser.add_argument("--others", type=int, default=100_000, help="people in brand 'small'")
    parser.add_argument("--requests", type=int, default=50, help="measured requests per case")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of each case")
    parser.add_argument("--skip-export", action="store_true", help="do not time the CSV export")
    parser.add_argument("--reseed", action="store_true", help="drop and re-seed the database")
    parser.add_argument("--without-proposed-indexes", action="store_true", help="measure without them")
    args = parser.parse_args()

    for n in (args.subscribers, args.others):
        if math.gcd(n, ADDRESS_FACTOR) != 1:
            parser.error(f"{n} people: the count must not be a multiple of {ADDRESS_FACTOR}")
    env = _env()
    fresh = args.reseed or not _database_exists()
    if fresh:
        print(f"Creating database {DB_NAME} (manage.py migrate) ...", flush=True)
        recreate_database(env)
    setup_django(env)
    wanted = {BIG: args.subscribers, SMALL: args.others}
    if not fresh and seeded_counts() != wanted:
        print(f"Database {DB_NAME} holds {seeded_counts()}, not {wanted}: re-seeding", flush=True)
        from django.db import connections

        connections.close_all()
        recreate_database(env)
        fresh = True
    if fresh:
        print("Seeding (set-based) ...", flush=True)
        seed(args.subscribers, args.others)
    set_proposed_indexes(present=not args.without_proposed_indexes)

    bench = Bench()
    results = [bench.measure(case, args.requests) for case in cases(bench)]
    detail = measure_detail(bench, args.requests)

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()
    print()
    print(f"Subscriber list, brand '{BIG}' with {args.subscribers:,} people ('{SMALL}': {args.others:,})")
    print(
        f"  PostgreSQL {version[0] if version else '?'}, {os.cpu_count()} cores, Python {platform.python_version()};"
        f" views called in-process, {args.requests} requests per case after {WARMUP} warm-up;"
        f" proposed indexes {'OFF' if args.without_proposed_indexes else 'on'}"
    )
    print()
    width = max(len(r.case.label) for r in results)
    print(f"  {'case':<{width}}  {'median ms':>9}  {'p95 ms':>7}  {'rows':>4}  {'queries':>7}")
    for r in results:
        flag = "" if r.p95_ms < TARGET_MS else f"  > {TARGET_MS:.0f} ms"
        flag += "" if r.case.target else "  (informational)"
        print(f"  {r.case.label:<{width}}  {r.median_ms:>9.1f}  {r.p95_ms:>7.1f}  {r.rows:>4}  {r.queries:>7}{flag}")
    print(f"  {'detail page (one person)':<{width}}  {detail[0]:>9.1f}  {detail[1]:>7.1f}")

    if not args.skip_export:
        rows, seconds, first_byte, start_rss, growth = measure_export(bench)
        print()
        print(
            f"  CSV export of brand '{BIG}': {rows:,} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s),"
            f" first byte after {first_byte * 1000:.0f} ms; resident memory {start_rss:.0f} MB at start,"
            f" grew at most {growth:.1f} MB while streaming"
        )
    if args.explain:
        for result in results:
            print(f"\n--- EXPLAIN ANALYZE: {result.case.label} {result.case.params}")
            print(explain(result.case))
    slow = [r.case.label for r in results if r.case.target and r.p95_ms >= TARGET_MS]
    if slow:
        print(f"\nSlower than {TARGET_MS:.0f} ms at p95: {', '.join(slow)}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
