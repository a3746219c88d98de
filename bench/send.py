"""Sending a campaign end to end through real workers (issue #5).

What it measures
    A campaign to ``--n`` confirmed subscribers (100,000 by default,
    1,000,000 with ``--million``) sent by real Celery worker processes on
    PostgreSQL and Redis into a counting SMTP sink, against the raw limit
    measured in the same run:

    - end to end: from ``delivery.schedule()`` (the start task goes through the
      broker) until the campaign's ``finished_at``, planning included, as
      messages per second;
    - planning: the campaign's ``started_at`` → ``planned_at`` (the
      ``INSERT … SELECT`` of the deliveries), and the broker hop before it;
    - the raw limit: plain ``smtplib`` sending the same number of messages,
      pre-built with the campaign's own message builder and serialised to
      bytes before the clock starts, over as many persistent connections as
      there are worker processes (one process each), into the same sink;
    - their ratio (the target is at least 50%);
    - peak RSS (``VmHWM``) of every worker process, the pool children that run
      the batches and the main processes, and the children's RSS when a tenth
      of the messages had gone (flat memory: compare 100,000 with 1,000,000);
    - a cProfile of one batch (``delivery.send_batch`` in this process, after
      a warm-up batch) of a second campaign, top lines by cumulative and by
      own time.

    The sink is Postfix's ``smtp-sink`` (C; its ``-c`` counters give the
    delivered count) when installed, else an aiosmtpd server in a separate
    process; the output says which. The benchmark fails unless the sink
    received exactly N messages for the campaign and every delivery is sent.

    The raw senders cycle through a pool of distinct pre-built messages
    (``--raw-distinct``, 20,000 by default) rather than holding N of them
    (1,000,000 x ~14 KB would not fit comfortably): sending pre-serialised
    bytes costs the same whichever message they are; the output says how
    often each was reused.

How to run it
    PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and Redis on
    127.0.0.1:6379 must be running. From the repository root::

        .venv/bin/python bench/send.py [--n N | --million] [--workers 2] [--layout separate|pool]
                                       [--batch 500] [--raw-distinct 20000] [--sink auto|smtp-sink|aiosmtpd]
                                       [--keep-db] [--time-limit SECONDS]

    It drops and recreates the database ``assent_send_bench`` (``manage.py
    migrate``, then a set-based seed: ``INSERT … SELECT generate_series``),
    flushes Redis databases 10 (cache) and 11 (broker) before and after, and
    drops the database at the end unless ``--keep-db`` is given; with
    ``--keep-db`` a later run with the same N reuses the seeded subscribers
    (campaigns and deliveries are truncated first). All traffic stays on
    loopback. ``--layout separate`` starts ``--workers`` ``celery worker``
    processes with ``--concurrency=1``; ``pool`` starts one with
    ``--concurrency=<workers>`` (separate was the faster here). ``--time-limit``
    cancels the campaign after that many seconds and reports a partial run
    (the rate over that window; the counts still checked). The machine's load
    average is printed before and after: on a shared machine, run it when the
    load is low.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import multiprocessing
import os
import pstats
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import psycopg
import redis
from psycopg import sql

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from audiences.models import Audience, Brand, Subscriber
    from campaigns.models import Campaign

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "assent_send_bench"
PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DB_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
CACHE_URL = "redis://127.0.0.1:6379/10"
BROKER_URL = "redis://127.0.0.1:6379/11"
TARGET_RATIO = 0.5
BRAND_SLUG = "bench-outfitters"
MAIN_AUDIENCE = "Newsletter"
PROFILE_AUDIENCE = "Profile sample"

FIRST_NAMES = ["Anna", "Ben", "Chloé", "David", "Emma", "Felix", "Greta", "Hugo", "Ida", "Jonas", "Klara", "Leon"]
LAST_NAMES = ["Smith", "Jones", "Brown", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann", "Koch"]
CITIES = ["Berlin", "Hamburg", "München", "Köln", "Leipzig", "Bremen", "Dresden", "Bonn"]


def _pg_array(words: list[str]) -> str:
    return "ARRAY[" + ",".join(f"'{w}'" for w in words) + "]"


# Everyone confirmed with an active subscription to the newsletter; a tenth read German, so two
# footers get compiled. The f-string splices in the constants above, never input.
SEED_SUBSCRIBERS = f"""
INSERT INTO audiences_subscriber
    (brand_id, email, email_hash, name, language, attributes, status, frequency, source, token_secret,
     created_at, confirmed_at)
SELECT %(brand)s, t.email, encode(sha256(convert_to(t.email, 'UTF8')), 'hex'),
       ({_pg_array(FIRST_NAMES)})[1 + t.g %% {len(FIRST_NAMES)}]
           || ' ' || ({_pg_array(LAST_NAMES)})[1 + (t.g / {len(FIRST_NAMES)}) %% {len(LAST_NAMES)}],
       CASE WHEN t.g %% 10 = 0 THEN 'de' ELSE 'en' END,
       jsonb_build_object('city', ({_pg_array(CITIES)})[1 + t.g %% {len(CITIES)}],
                          'plan', CASE WHEN t.g %% 5 = 0 THEN 'gold' ELSE 'basic' END),
       'confirmed', 'published', 'import', md5(random()::text || t.g::text),
       now() - interval '400 days' + (t.g::float8 / %(n)s) * interval '365 days',
       now() - interval '400 days' + (t.g::float8 / %(n)s) * interval '365 days' + interval '5 minutes'
FROM (SELECT g, 'reader' || g || '@mail' || (g %% 7) || '.example' AS email
      FROM generate_series(1, %(n)s) AS g) AS t
"""  # noqa: S608

SEED_SUBSCRIPTIONS = """
INSERT INTO audiences_subscription (subscriber_id, audience_id, status, source, requested_at, confirmed_at)
SELECT s.id, %(audience)s, 'active', 'import', s.created_at, s.confirmed_at
FROM audiences_subscriber s
WHERE s.brand_id = %(brand)s
ORDER BY s.id
LIMIT %(limit)s
"""

CAMPAIGN_SUBJECT = "{{ subscriber.first_name | default('Friend') }}, the spring collection is here"
CAMPAIGN_PREHEADER = "New arrivals, a workshop in {{ subscriber.attributes.city | default('your city') }} and 15% off"
_STYLE = """<style>
  h1 { font-size: 28px; line-height: 1.2; color: #14213d; margin: 0 0 12px; }
  h2 { font-size: 20px; line-height: 1.3; color: #14213d; margin: 24px 0 8px; }
  p { margin: 0 0 14px; color: #2b2d42; }
  .hero { background: #fca311; color: #14213d; padding: 24px; border-radius: 8px; }
  .button { display: inline-block; background: #14213d; color: #ffffff; padding: 12px 20px;
            border-radius: 6px; text-decoration: none; font-weight: bold; }
  .card { border: 1px solid #e5e5e5; border-radius: 8px; padding: 16px; margin: 16px 0; }
  .muted { color: #6c757d; font-size: 13px; }
  table.products { width: 100%; border-collapse: collapse; }
  table.products td { padding: 8px; vertical-align: top; width: 33%; }
  .price { font-weight: bold; color: #0b6e4f; }
</style>
"""
_PRODUCTS = [
    ("Linen overshirt", "Breathable, garment-washed linen in sand, sage and navy.", "79.00"),
    ("Canvas tote", "Heavy cotton canvas with a leather strap; fits a laptop and lunch.", "35.00"),
    ("Trail sneaker", "Recycled mesh upper, grippy sole, made for city parks and light trails.", "119.00"),
    ("Merino tee", "Fine merino that stays fresh for days; cool in summer, warm in spring.", "59.00"),
    ("Rain shell", "Packs into its own pocket, taped seams, a hood that actually fits.", "149.00"),
    ("Wool socks", "A three-pack knitted in Portugal from responsibly farmed wool.", "24.00"),
]
_STORIES = [
    (
        "How we dye with plants",
        "Our summer colours come from madder root, weld and indigo. We visited the small dye house in Portugal "
        "that has worked with us for six years and asked how they keep every batch consistent without synthetic "
        "fixatives. The short answer: patience, rainwater and a lot of testing on scraps before a single metre "
        "of fabric goes into the vat.",
    ),
    (
        "Repair, don't replace",
        "Every jacket we sell comes with free repairs for five years. Bring it to any of our shops or send it in "
        "with the prepaid label in your account. Last year we fixed more than 4,000 zips, seams and pockets, and "
        "we would love to fix yours too. Our tailors also shorten sleeves and hems at no charge.",
    ),
    (
        "Workshop: mending basics",
        "Join our tailors for an evening of visible mending: darning, patches and sashiko stitches. Materials, "
        "tea and biscuits are on us; bring a favourite piece that needs some love. Places are limited to twelve "
        "people per session so that everyone gets help, so please reserve a seat early.",
    ),
    (
        "From our customers",
        "Marta wore the same rain shell on three continents and sent us photos from each of them; Jonas has "
        "resoled his boots twice. We collect these stories because they are the best proof that fewer, better "
        "things are worth it. Tell us yours by replying to this email, and we may feature it next month.",
    ),
]


def campaign_html() -> str:
    """A realistic ~6 KB newsletter body as an editor saves it: a <style> block, personalisation, links.

    Laid out one element per line, as editors write it: a line over 998 characters would make Django
    switch the whole HTML part to quoted-printable, which costs more per message.
    """
    cells = [
        f'  <td>\n    <p><strong>{name}</strong></p>\n    <p class="muted">{text}</p>\n'
        f'    <p class="price">€{price}</p>\n'
        f'    <p><a href="https://shop.bench.example/p/{i}?utm_source=newsletter&amp;utm_campaign=spring">View</a></p>\n'
        "  </td>\n"
        for i, (name, text, price) in enumerate(_PRODUCTS, start=1)
    ]
    rows = "".join("<tr>\n" + "".join(cells[i : i + 3]) + "</tr>\n" for i in range(0, len(cells), 3))
    stories = "".join(f'<div class="card">\n<h2>{title}</h2>\n<p>{text}</p>\n</div>\n' for title, text in _STORIES)
    return f"""{_STYLE}
<div class="hero">
<h1>Hello {{{{ subscriber.first_name | default("there") }}}}, spring is here</h1>
<p>Our new collection arrived this week{{% if subscriber.attributes.city %}}, and the shop in
{{{{ subscriber.attributes.city }}}} has it all on the rails{{% endif %}}. As a newsletter reader you get 15% off
everything until Sunday with the code <strong>SPRING15</strong>.</p>
<p><a class="button" href="https://shop.bench.example/spring?utm_source=newsletter&amp;utm_campaign=spring">Shop the
collection</a></p>
</div>
<h2>Coming up</h2>
<ul>
<li><a href="https://bench.example/events/mending?utm_source=newsletter">Mending evening</a>, Thursday 18:30</li>
<li><a href="https://bench.example/events/walk?utm_source=newsletter">Sunday morning walk</a> with the trail team</li>
<li>Repair café in every shop, the first Saturday of the month, 10:00 to 14:00</li>
</ul>
<h2>New this week</h2>
<table class="products" role="presentation">
{rows}</table>
{stories}
<p>{{% if subscriber.attributes.plan == "gold" %}}As a Gold member, shipping is always free for you.
{{% else %}}Shipping is free on orders over €50.{{% endif %}} Questions? Just reply to this email; a real person
reads every message.</p>
<p class="muted">Read more stories in <a href="https://bench.example/journal?utm_source=newsletter">our journal</a>.
Thank you for reading, {{{{ subscriber.first_name | default("friend") }}}}.</p>
<p class="muted">P.S. Our spring returns policy: anything bought between now and the end of May can come back until
the end of July, unworn and with its tags, in any shop or by post with the label in your account. Refunds reach your
card within five working days. Gift cards never expire, and you can check a balance on the website at any time.
Prices include VAT; the discount code works once per order and cannot be combined with other offers.</p>
"""


# --- Environment, database, Redis -------------------------------------------------------------------


def django_env(*, sink_port: int, batch: int, parallel: int) -> dict[str, str]:
    """The environment of this process and the workers: production mode (DEBUG off, so Django keeps no
    per-query log that would grow a worker's memory), own databases, the sink as the mail server."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": DB_URL,
        "REDIS_URL": CACHE_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "EMAIL_URL": f"smtp://127.0.0.1:{sink_port}",
        "DEBUG": "false",
        "SECRET_KEY": "bench-only-not-secret-" + "x" * 40,
        "ALLOWED_HOSTS": "localhost",
        "SITE_URL": "https://bench.invalid",
        "SECURE_SSL_REDIRECT": "false",
        "DELIVERY_BATCH_SIZE": str(batch),
        "DELIVERY_PARALLEL": str(parallel),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10)


def prepare_database(env: dict[str, str], *, keep: bool) -> None:
    """Recreate the benchmark database (kept as it is with ``--keep-db``, if it exists), then migrate."""
    with _admin() as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone() is not None
        if exists and not keep:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))
        if not exists or not keep:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
    _run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], env)


def drop_database() -> None:
    with _admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))


def flush_redis() -> None:
    for url in (CACHE_URL, BROKER_URL):
        redis.Redis.from_url(url).flushdb()


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    # Tasks sent from here (schedule → start_campaign) must go through this app's broker.
    import config.celery  # noqa: F401


@dataclass
class Seeded:
    brand: Brand
    audience: Audience
    profile_audience: Audience
    seconds: float
    reused: bool


def seed(n: int, *, profile_size: int) -> Seeded:
    """One brand, the newsletter audience with N confirmed subscribers, and a small profiling audience.

    Reuses the subscribers a kept database already holds when there are exactly N (campaigns and
    deliveries go, so every run starts from the same state).
    """
    from django.db import connection, transaction

    from audiences.models import Audience, Brand, Subscriber

    started = time.monotonic()
    brand = Brand.objects.filter(slug=BRAND_SLUG).first()
    reused = brand is not None and Subscriber.objects.filter(brand=brand).count() == n
    with transaction.atomic(), connection.cursor() as cursor:
        if brand is not None and reused:
            cursor.execute("TRUNCATE campaigns_campaign CASCADE")
            Audience.objects.filter(brand=brand, name=PROFILE_AUDIENCE).delete()
        else:
            cursor.execute("TRUNCATE audiences_brand CASCADE")
            brand = Brand.objects.create(
                name="Bench Outfitters",
                slug=BRAND_SLUG,
                from_name="Bench Outfitters",
                from_email="news@bench.example",
                reply_to="hello@bench.example",
                postal_address="Bench Outfitters GmbH, Musterstraße 1, 10115 Berlin, Germany",
                privacy_url="https://bench.example/privacy",
            )
            Audience.objects.create(brand=brand, name=MAIN_AUDIENCE, description="News and offers")
            cursor.execute(SEED_SUBSCRIBERS, {"brand": brand.pk, "n": n})
        audience = Audience.objects.get(brand=brand, name=MAIN_AUDIENCE)
        profile_audience = Audience.objects.create(brand=brand, name=PROFILE_AUDIENCE, is_public=False)
        if not reused:
            cursor.execute(SEED_SUBSCRIPTIONS, {"brand": brand.pk, "audience": audience.pk, "limit": n})
        cursor.execute(SEED_SUBSCRIPTIONS, {"brand": brand.pk, "audience": profile_audience.pk, "limit": profile_size})
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE audiences_subscriber")
        cursor.execute("VACUUM ANALYZE audiences_subscription")
    return Seeded(brand, audience, profile_audience, time.monotonic() - started, reused)


def make_campaign(*, brand: Brand, audience: Audience, name: str) -> Campaign:
    from campaigns.models import Campaign

    campaign = Campaign.objects.create(
        brand=brand,
        name=name,
        subject=CAMPAIGN_SUBJECT,
        preheader=CAMPAIGN_PREHEADER,
        html_body=campaign_html(),
    )
    campaign.audiences.set([audience])
    return campaign


# --- The SMTP sink -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Sink:
    """A counting SMTP sink in its own process; ``count()`` is the number of messages it accepted."""

    _MESG = re.compile(rb"mesg=(\d+)")

    def __init__(self, kind: str, workdir: Path) -> None:
        self.port = _free_port()
        self.counts = workdir / "sink-counts"
        binary = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else "")
        if kind == "auto":
            kind = "smtp-sink" if binary else "aiosmtpd"
        if kind == "smtp-sink":
            if not binary:
                raise RuntimeError("smtp-sink is not installed (Debian package postfix)")
            # -c: running counters on stdout, updated at every "."; -u: it refuses to run as root otherwise.
            command = [binary, "-c", *(["-u", "nobody"] if os.geteuid() == 0 else []), f"127.0.0.1:{self.port}", "256"]
            self.label = f"Postfix smtp-sink ({binary}), 127.0.0.1:{self.port}"
        else:
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-aiosmtpd",
                str(self.port),
                str(self.counts),
            ]
            why = "chosen with --sink" if binary else "smtp-sink is not installed"
            self.label = f"aiosmtpd in a separate process ({why}), 127.0.0.1:{self.port}"
        self.kind = kind
        with self.counts.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, start_new_session=True)
        self._last = 0
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"the SMTP sink exited with {self.process.returncode}")
            time.sleep(0.1)
        raise RuntimeError("the SMTP sink did not start listening")

    def count(self) -> int:
        with self.counts.open("rb") as f:
            f.seek(max(0, self.counts.stat().st_size - 256))
            found = self._MESG.findall(f.read())
        if found:
            self._last = int(found[-1])
        return self._last

    def wait_for(self, expected: int, timeout: float = 10) -> int:
        """The count once it reaches ``expected`` or stops changing within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.count() < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.count()

    def stop(self) -> None:
        _stop_process(self.process, grace=5)


def serve_aiosmtpd(port: int, counts: Path) -> None:
    """The fallback sink: accept every message, write the running count (atomically) ten times a second."""
    import asyncio

    from aiosmtpd.smtp import SMTP, Envelope, Session

    class Counter:
        n = 0

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            self.n += 1
            return "250 OK"

    async def serve() -> None:
        handler = Counter()
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: SMTP(handler, hostname="sink.invalid"), "127.0.0.1", port)
        tmp = counts.with_suffix(".tmp")
        while True:
            tmp.write_bytes(f"mesg={handler.n}\n".encode())
            tmp.replace(counts)
            await asyncio.sleep(0.1)

    asyncio.run(serve())


def _stop_process(process: subprocess.Popen[Any], *, grace: float) -> None:
    """SIGTERM the process we started, then SIGKILL its own session (its children) if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# --- The raw limit: plain smtplib, pre-built messages ------------------------------------------------------


@dataclass
class Raw:
    sent: int
    seconds: float
    connections: int
    distinct: int
    message_bytes: int

    @property
    def rate(self) -> float:
        return self.sent / self.seconds


def _prebuilt(
    campaign: Campaign, audiences: list[Audience], subscribers: list[Subscriber]
) -> list[tuple[str, list[str], bytes]]:
    """Envelope and wire bytes exactly as a worker would send them (the campaign's own message builder).

    Runs in a forked child: everything it reads from the database was loaded by the parent.
    """
    from campaigns import mime, rendering
    from campaigns.models import Delivery

    messages = mime.CampaignMessages(campaign, rendering.compile_campaign(campaign), audiences)
    built = []
    for i, s in enumerate(subscribers, start=1):
        d = Delivery(pk=i, campaign=campaign, subscriber=s)  # never saved: only its id and subscriber are read
        message = messages.build(d)
        assert message is not None, "the bench's addresses are ASCII"
        built.append((message.envelope_from, [message.recipient], message.data))
    return built


def _raw_sender(
    port: int,
    campaign: Campaign,
    audiences: list[Audience],
    subscribers: list[Subscriber],
    sends: int,
    barrier: Barrier,
    results: Queue[tuple[float, float, int, int]],
) -> None:
    """One connection: build and serialise the pool first, then (clock running) send ``sends`` messages."""
    import smtplib

    try:
        messages = _prebuilt(campaign, audiences, subscribers)
    except BaseException:
        barrier.abort()  # the parent and the other senders stop waiting
        raise
    size = sum(len(m[2]) for m in messages) // max(len(messages), 1)
    barrier.wait(timeout=900)
    started = time.monotonic()
    smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.invalid", timeout=30)
    for i in range(sends):
        sender, recipients, data = messages[i % len(messages)]
        smtp.sendmail(sender, recipients, data)
    smtp.quit()
    results.put((started, time.monotonic(), sends, size))


def measure_raw(*, campaign: Campaign, n: int, connections: int, distinct: int, sink: Sink) -> Raw:
    """Plain smtplib over ``connections`` persistent connections (one process each), N messages in all."""
    from django.db import connections as db_connections

    from audiences.models import Subscriber

    audience_ids = list(campaign.audiences.values_list("pk", flat=True))
    pool = list(
        Subscriber.objects.filter(subscriptions__audience_id__in=audience_ids).order_by("pk")[: min(distinct, n)]
    )
    campaign = type(campaign).objects.select_related("brand").get(pk=campaign.pk)
    audiences = list(campaign.audiences.order_by("pk"))
    # The children inherit this process; they must not share its database sockets.
    db_connections.close_all()
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(connections + 1)
    results: Queue[tuple[float, float, int, int]] = context.Queue()
    shares = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]
    per = -(-len(pool) // connections)
    workers = [
        context.Process(
            target=_raw_sender,
            args=(sink.port, campaign, audiences, pool[i * per : (i + 1) * per], shares[i], barrier, results),
            daemon=True,
        )
        for i in range(connections)
    ]
    before = sink.count()
    for w in workers:
        w.start()
    barrier.wait(timeout=900)
    outcomes: list[tuple[float, float, int, int]] = []
    deadline = time.monotonic() + max(600.0, n / 100)
    while len(outcomes) < len(workers):
        with contextlib.suppress(queue.Empty):
            outcomes.append(results.get(timeout=1))
            continue
        if time.monotonic() > deadline or any(w.exitcode not in (None, 0) for w in workers):
            raise RuntimeError(f"raw: a sender failed or ran out of time (exit codes {[w.exitcode for w in workers]})")
    for w in workers:
        w.join(timeout=30)
    received = sink.wait_for(before + n) - before
    if received != n:
        raise RuntimeError(f"raw: the sink received {received} messages, expected {n}")
    seconds = max(o[1] for o in outcomes) - min(o[0] for o in outcomes)
    size = sum(o[3] for o in outcomes) // len(outcomes)
    return Raw(sent=n, seconds=seconds, connections=connections, distinct=len(pool), message_bytes=size)


# --- Workers and the campaign run -----------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[Any]
    log: Path
    # pid → highest VmHWM seen (kB); pid → RSS when a tenth of the messages had gone (kB).
    peak_kb: dict[int, int] = field(default_factory=dict)
    early_kb: dict[int, int] = field(default_factory=dict)
    children: set[int] = field(default_factory=set)

    def batch_seconds(self) -> list[float]:
        """How long each batch task took, from the worker's log."""
        return [float(m) for m in _BATCH_DONE.findall(self.log.read_text(errors="replace"))]


_BATCH_DONE = re.compile(r"send_campaign_batch\[[^\]]+\] succeeded in ([\d.]+)s")


def start_workers(*, env: dict[str, str], workers: int, layout: str, workdir: Path) -> list[Worker]:
    celery = str(Path(sys.executable).with_name("celery"))
    layouts = [1] * workers if layout == "separate" else [workers]
    started = []
    for i, concurrency in enumerate(layouts, start=1):
        log = workdir / f"worker{i}.log"
        command = [
            celery, "-A", "config", "worker", "--pool=prefork", f"--concurrency={concurrency}",
            f"--hostname=sendbench{i}@%h", "--loglevel=INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat",
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        started.append(Worker(name=f"sendbench{i}", process=process, log=log))
    deadline = time.monotonic() + 90
    for w in started:
        while "ready." not in w.log.read_text(errors="replace"):
            if w.process.poll() is not None or time.monotonic() > deadline:
                stop_workers(started)
                raise RuntimeError(f"worker {w.name} did not start:\n{w.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
    return started


def _memory_kb(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process in kB, from /proc; (0, 0) once it has gone."""
    hwm = rss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return hwm, rss


def sample_memory(workers: list[Worker], *, early: bool) -> None:
    for w in workers:
        pids = [w.process.pid]
        with contextlib.suppress(psutil.Error):
            children = [c.pid for c in psutil.Process(w.process.pid).children(recursive=True)]
            w.children.update(children)
            pids += children
        for pid in pids:
            hwm, rss = _memory_kb(pid)
            w.peak_kb[pid] = max(w.peak_kb.get(pid, 0), hwm)
            if early and pid in w.children and pid not in w.early_kb and rss:
                w.early_kb[pid] = rss


def stop_workers(workers: list[Worker]) -> None:
    for w in workers:
        if w.process.poll() is None:
            w.process.send_signal(signal.SIGTERM)  # warm shutdown
    for w in workers:
        _stop_process(w.process, grace=20)


@dataclass
class Run:
    seconds: float  # schedule() → finished_at, or → the time limit
    done: int  # messages the sink had accepted by then
    planning: float
    broker_hop: float
    received: int  # the sink's count for the campaign once nothing is in flight
    statuses: dict[str, int]
    partial: bool  # stopped (cancelled) at the time limit

    @property
    def rate(self) -> float:
        return self.done / self.seconds

    @property
    def sent(self) -> int:
        return self.statuses.get("sent", 0)


def run_campaign(*, campaign: Campaign, n: int, sink: Sink, workers: list[Worker], time_limit: float) -> Run:
    """Schedule now (the start task goes through the broker) and wait for ``sent``, sampling worker memory.

    At ``time_limit`` the campaign is cancelled and the run reported as partial: the rate is over
    that window, and the claimed batches are let finish so the sink's count can be checked.
    """
    from django.db.models import Count
    from django.utils import timezone

    from campaigns import delivery
    from campaigns.models import Campaign, Delivery

    before = sink.count()
    began = timezone.now()
    clock = time.monotonic()
    delivery.schedule(campaign=campaign, user=None)
    last_report = clock
    status: str = Campaign.Status.SCHEDULED
    partial = False
    while status != Campaign.Status.SENT:
        time.sleep(0.25)
        done = sink.count() - before
        sample_memory(workers, early=done >= n / 10)
        status = Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)
        if status in {Campaign.Status.CANCELLED, Campaign.Status.PAUSED}:
            raise RuntimeError(f"the campaign is {status}")
        if time.monotonic() - clock > time_limit and status != Campaign.Status.SENT:
            cut, done = time.monotonic() - clock, sink.count() - before
            delivery.cancel(campaign=campaign, user=None)
            partial = True
            print(f"  time limit: cancelled after {cut:.0f} s with {done:,} sent", flush=True)
            break
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            print(f"  … {done:,} sent after {last_report - clock:.0f} s, status {status}", flush=True)
    sample_memory(workers, early=False)
    in_flight = Delivery.objects.filter(campaign=campaign, status=Delivery.Status.SENDING)
    deadline = time.monotonic() + 120
    while in_flight.exists() and time.monotonic() < deadline:
        time.sleep(0.25)
    campaign.refresh_from_db()
    assert campaign.started_at is not None
    assert campaign.planned_at is not None
    statuses = dict(
        Delivery.objects.filter(campaign=campaign)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    if partial:
        seconds = cut
    else:
        assert campaign.finished_at is not None
        seconds, done = (campaign.finished_at - began).total_seconds(), n
    return Run(
        seconds=seconds,
        done=done,
        planning=(campaign.planned_at - campaign.started_at).total_seconds(),
        broker_hop=(campaign.started_at - began).total_seconds(),
        received=sink.wait_for(before + statuses.get(Delivery.Status.SENT, 0)) - before,
        statuses=statuses,
        partial=partial,
    )


# --- Profile of one batch ----------------------------------------------------------------------------------------


@dataclass
class Profile:
    messages: int
    seconds: float
    cumulative: str
    own: str


def _top(profiler: cProfile.Profile, key: str, lines: int) -> str:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(key).print_stats(lines)
    # Keep the table: from the column header on.
    text = out.getvalue()
    return text[text.index("   ncalls") :].rstrip() if "   ncalls" in text else text.rstrip()


def profile_batch(*, seeded: Seeded, batch: int) -> Profile:
    """One ``send_batch`` in this process under cProfile, after a warm-up batch of the same campaign.

    The workers are stopped by now: the tasks ``schedule`` and ``start`` enqueue stay in the broker
    (flushed at the end), and this process plays the worker.
    """
    from campaigns import delivery

    campaign = make_campaign(brand=seeded.brand, audience=seeded.profile_audience, name="Profile")
    delivery.schedule(campaign=campaign, user=None)
    delivery.start(campaign_id=campaign.pk)
    delivery.send_batch(campaign_id=campaign.pk, size=batch)  # compiles the templates, warms caches
    profiler = cProfile.Profile()
    started = time.monotonic()
    profiler.enable()
    result = delivery.send_batch(campaign_id=campaign.pk, size=batch)
    profiler.disable()
    seconds = time.monotonic() - started
    delivery.cancel(campaign=campaign, user=None)
    return Profile(result.sent, seconds, _top(profiler, "cumulative", 15), _top(profiler, "tottime", 15))


# --- Report ----------------------------------------------------------------------------------------------------


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} cores)"


def _mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MB"


def report(
    *,
    args: argparse.Namespace,
    n: int,
    sink: Sink,
    seeded: Seeded,
    raw: Raw,
    run: Run,
    workers: list[Worker],
    profile: Profile,
    loads: tuple[str, str],
) -> bool:
    ratio = run.rate / raw.rate
    layout = (
        f"{args.workers} x celery worker --pool=prefork --concurrency=1"
        if args.layout == "separate"
        else f"1 x celery worker --pool=prefork --concurrency={args.workers}"
    )
    reuse = -(-n // raw.distinct)
    rows = [
        ("recipients (N)", f"{n:,}"),
        ("SMTP sink", sink.label),
        ("workers", layout),
        ("DELIVERY_BATCH_SIZE", f"{args.batch}"),
        ("DELIVERY_PARALLEL", f"{args.workers}"),
        ("message size", f"{raw.message_bytes:,} bytes on the wire (HTML body source {len(campaign_html()):,} chars)"),
        ("load average before", loads[0]),
        ("load average after", loads[1]),
        ("seeding", f"{seeded.seconds:.1f} s" + (" (reused the kept database)" if seeded.reused else "")),
        ("broker hop", f"{run.broker_hop:.2f} s (schedule() → started_at)"),
        ("planning", f"{run.planning:.2f} s (started_at → planned_at)"),
        (
            "end to end",
            f"PARTIAL: cancelled {run.seconds:.1f} s after schedule() (time limit) with {run.done:,} of {n:,} sent"
            if run.partial
            else f"{run.seconds:.1f} s (schedule() → finished_at)",
        ),
        ("messages/s end to end", f"{run.rate:,.0f}" + (" (over the partial run)" if run.partial else "")),
        (
            "raw smtplib limit",
            f"{raw.rate:,.0f} messages/s ({raw.sent:,} in {raw.seconds:.1f} s over {raw.connections} connections; "
            f"{raw.distinct:,} distinct pre-built messages, each sent up to {reuse}x)",
        ),
        ("ratio", f"{ratio:.0%} (target ≥ {TARGET_RATIO:.0%})"),
    ]
    for w in workers:
        for pid in sorted(w.peak_kb):
            role = "pool child" if pid in w.children else "main"
            early = f", RSS at 10%: {_mb(w.early_kb[pid])}" if pid in w.early_kb else ""
            rows.append((f"peak RSS {w.name} {role}", f"{_mb(w.peak_kb[pid])} (pid {pid}{early})"))
    batches = sorted(t for w in workers for t in w.batch_seconds())
    if batches:
        median, p95 = batches[len(batches) // 2], batches[int(len(batches) * 0.95)]
        rows.append(
            (
                "batch tasks",
                f"{len(batches)}: median {median:.2f} s, p95 {p95:.2f} s, max {batches[-1]:.2f} s"
                f" (median {median * 1000 / args.batch:.2f} ms per message)",
            )
        )
    rows += [
        ("verified", f"sink received {run.received:,} for the campaign (N = {n:,}); deliveries {run.statuses}"),
        (
            "profiled batch",
            f"{profile.messages} messages in {profile.seconds * 1000:.0f} ms under cProfile "
            f"({profile.seconds * 1000 / max(profile.messages, 1):.2f} ms each)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nCampaign send benchmark (bench/send.py)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("\nOne batch under cProfile, top 15 by cumulative time:")
    print(profile.cumulative)
    print("\nThe same batch, top 15 by own time:")
    print(profile.own)
    # Honest counts: the sink got exactly the messages marked sent, and (unless cut short) all N.
    ok = run.received == run.sent and (run.partial or run.sent == n)
    verdict = "FAIL" if not ok else "PASS" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"\n{verdict}{' (partial run)' if run.partial else ''}")
    return ok


# --- Main -----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="recipients (default 100,000)")
    parser.add_argument("--million", action="store_true", help="1,000,000 recipients")
    parser.add_argument("--workers", type=int, default=2, help="worker processes = parallel chains = connections")
    parser.add_argument("--layout", choices=["separate", "pool"], default="separate")
    parser.add_argument("--batch", type=int, default=500, help="DELIVERY_BATCH_SIZE")
    parser.add_argument("--raw-distinct", type=int, default=20_000, help="distinct pre-built messages for the raw run")
    parser.add_argument("--sink", choices=["auto", "smtp-sink", "aiosmtpd"], default="auto")
    parser.add_argument("--keep-db", action="store_true", help="keep the database (and reuse it next time)")
    parser.add_argument(
        "--time-limit", type=float, default=None, help="cancel the campaign after this many seconds (a partial run)"
    )
    parser.add_argument("--serve-aiosmtpd", nargs=2, metavar=("PORT", "COUNTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n < 1 or args.workers < 1 or args.batch < 1 or args.raw_distinct < 1:
        parser.error("--n, --workers, --batch and --raw-distinct must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_aiosmtpd:
        serve_aiosmtpd(int(args.serve_aiosmtpd[0]), Path(args.serve_aiosmtpd[1]))
        return 0
    n = 1_000_000 if args.million else args.n
    loads = [_load()]
    print(f"load average: {loads[0]}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="assent-send-bench-"))
    workers: list[Worker] = []
    sink = Sink(args.sink, workdir)
    try:
        env = django_env(sink_port=sink.port, batch=args.batch, parallel=args.workers)
        flush_redis()
        print(f"sink: {sink.label}; preparing {DB_NAME} …", flush=True)
        prepare_database(env, keep=args.keep_db)
        setup_django(env)
        seeded = seed(n, profile_size=2 * args.batch)
        print(f"seeded {n:,} subscribers in {seeded.seconds:.1f} s; measuring the raw limit …", flush=True)
        campaign = make_campaign(brand=seeded.brand, audience=seeded.audience, name="Spring collection")
        raw = measure_raw(campaign=campaign, n=n, connections=args.workers, distinct=args.raw_distinct, sink=sink)
        print(f"raw: {raw.rate:,.0f} messages/s; starting workers …", flush=True)
        workers = start_workers(env=env, workers=args.workers, layout=args.layout, workdir=workdir)
        sample_memory(workers, early=False)
        print(f"workers ready; sending the campaign (load average {_load()}) …", flush=True)
        # Without --time-limit, a run slower than 50 messages/s is cut short (and says so).
        limit = args.time_limit or max(300.0, n / 50)
        run = run_campaign(campaign=campaign, n=n, sink=sink, workers=workers, time_limit=limit)
        loads.append(_load())
        stop_workers(workers)
        profile = profile_batch(seeded=seeded, batch=args.batch)
        ok = report(args=args, n=n, sink=sink, seeded=seeded, raw=raw, run=run, workers=workers, profile=profile,
                    loads=(loads[0], loads[1]))  # fmt: skip
        return 0 if ok else 1
    finally:
        stop_workers(workers)
        sink.stop()
        flush_redis()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if not args.keep_db:
            drop_database()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
