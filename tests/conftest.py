"""Shared fixtures: personas, a brand with a signup form, and the real parts.

Unit tests run Celery tasks eagerly and use Django's locmem mail backend.
Integration and browser tests (``real_stack``) use a real Celery worker process
on Redis, a real aiosmtpd SMTP server, and pytest-django's live server, all on
the PostgreSQL test database.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache

from audiences.forms import render_stamp
from audiences.models import Audience, Brand, Membership, SignupForm
from audiences.signup_forms import create_form
from config.celery import app as celery_app
from tests.mailserver import MailServer

ROOT = Path(__file__).resolve().parent.parent
WORDING = "Yes, email me what I ticked. I can unsubscribe at any time."


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=3):
            return True
    except OSError:
        return False


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail at once, and say why, when the real services are not there."""
    missing = []
    db_url = os.environ.get("DATABASE_URL", "")
    if db_url.startswith("postgres") and not _reachable(db_url, 5432):
        missing.append(f"PostgreSQL at {db_url} (DATABASE_URL)")
    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        url = os.environ.get(name, "")
        if url.startswith("redis") and not _reachable(url, 6379):
            missing.append(f"Redis at {url} ({name})")
    if missing:
        pytest.exit("Not reachable: " + "; ".join(missing) + ". Start them or point the variables elsewhere.", 2)


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hashing() -> None:
    # Real hashing costs ~0.3 s per login or user; tests don't need its strength.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _uploads_in_a_temporary_folder(tmp_path: Path, settings: Any) -> None:
    settings.IMPORT_DIR = tmp_path / "imports"


@pytest.fixture(autouse=True)
def _eager_tasks_and_clean_cache() -> Iterator[None]:
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    cache.clear()
    yield
    celery_app.conf.task_always_eager = True


# --- Personas -------------------------------------------------------------------


@pytest.fixture
def brand(db: None) -> Brand:
    return Brand.objects.create(
        name="Acme Tea",
        slug="acme",
        from_name="Acme Tea",
        from_email="news@acme.example",
        reply_to="help@acme.example",
        postal_address="Acme Tea, 2 Leaf Lane, Bristol BS1 1AA",
        privacy_url="https://acme.example/privacy",
    )


@pytest.fixture
def other_brand(db: None) -> Brand:
    return Brand.objects.create(name="Rival", slug="rival", from_name="Rival", from_email="hi@rival.example")


@pytest.fixture
def news(brand: Brand) -> Audience:
    return Audience.objects.create(brand=brand, name="Weekly news", description="Every Friday.")


@pytest.fixture
def offers(brand: Brand) -> Audience:
    return Audience.objects.create(brand=brand, name="Offers", description="Now and then.")


@pytest.fixture
def signup_form(brand: Brand, news: Audience, offers: Audience) -> SignupForm:
    return create_form(
        brand=brand,
        slug="newsletter",
        title="Join Acme Tea",
        audiences=[news, offers],
        wording=WORDING,
        allowed_origins=["https://www.acme.example"],
    )


def _user(email: str) -> User:
    return User.objects.create_user(username=email, email=email, password="correct horse battery")


@pytest.fixture
def owner(brand: Brand) -> User:
    user = _user("alice@acme.example")
    Membership.objects.create(user=user, brand=brand, role=Membership.Role.OWNER)
    return user


@pytest.fixture
def editor(brand: Brand) -> User:
    user = _user("bob@acme.example")
    Membership.objects.create(user=user, brand=brand, role=Membership.Role.EDITOR)
    return user


@pytest.fixture
def outsider(other_brand: Brand) -> User:
    user = _user("charlie@rival.example")
    Membership.objects.create(user=user, brand=other_brand, role=Membership.Role.OWNER)
    return user


def signup_data(form: SignupForm, **overrides: Any) -> dict[str, Any]:
    """A well-formed POST for ``form``, rendered long enough ago to pass the fill-time check."""
    data: dict[str, Any] = {
        "email": "dana@example.com",
        "name": "Dana",
        "audiences": [a.pk for a in form.audiences.order_by("name")],
        "ts": render_stamp(form, at=time.time() - 30),
        "wording_version": form.current_wording().version,
        "website": "",
    }
    data.update(overrides)
    return data


# --- Real parts: SMTP server, Celery worker process, live server ------------------


@pytest.fixture(scope="session")
def mail_server() -> Iterator[MailServer]:
    server = MailServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def worker_var_dir(tmp_path_factory: Any) -> Path:
    """The test worker's ``VAR_DIR``; the live server stores uploads there too, as one host would."""
    return Path(tmp_path_factory.mktemp("worker-var"))


@pytest.fixture(scope="session")
def celery_worker_process(
    django_db_setup: None,
    django_db_blocker: Any,
    live_server: Any,
    mail_server: MailServer,
    tmp_path_factory: Any,
    worker_var_dir: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery worker`` process on Redis, the test database and the test SMTP server."""
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if not broker.startswith("redis"):
        pytest.fail("integration tests need CELERY_BROKER_URL=redis://… (run them with `make test`)")
    import redis

    redis.Redis.from_url(broker).flushdb()
    env = worker_env(site_url=live_server.url, mail_server=mail_server, var_dir=worker_var_dir)
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo", "--loglevel=INFO", "-n", "test@%h"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    _wait_for_worker(process, log_path)
    yield process
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def worker_env(*, site_url: str, mail_server: MailServer, var_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a test worker process: the test database and SMTP server, tasks through the broker."""
    db = settings.DATABASES["default"]
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "EMAIL_URL": f"smtp://127.0.0.1:{mail_server.port}?timeout=10",
        "SITE_URL": site_url,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "EMAIL_RETRY_BACKOFF_SECONDS": "1",
        "ASSENT_VAR_DIR": str(var_dir),
        **overrides,
    }


def _wait_for_worker(process: subprocess.Popen[bytes], log_path: Path, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the Celery worker exited early:\n{log_path.read_text()}")
        if "ready." in log_path.read_text():
            return
        time.sleep(0.2)
    pytest.fail(f"the Celery worker did not become ready in {timeout}s:\n{log_path.read_text()}")


@pytest.fixture
def real_stack(
    transactional_db: None,
    live_server: Any,
    celery_worker_process: Any,
    mail_server: MailServer,
    settings: Any,
    worker_var_dir: Path,
) -> Iterator[Any]:
    """Live server + worker + SMTP, with tasks going through the broker, links built on the live server."""
    settings.IMPORT_DIR = worker_var_dir / "imports"
    settings.SITE_URL = live_server.url
    settings.SITE_ORIGIN = live_server.url
    settings.SIGNUP_MIN_FILL_SECONDS = 1
    celery_app.conf.task_always_eager = False
    mail_server.clear()
    yield live_server
    celery_app.conf.task_always_eager = True


def db_snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every row of every Assent table, to assert that a request changed nothing."""
    from django.apps import apps

    models = [*apps.get_app_config("audiences").get_models(), *apps.get_app_config("campaigns").get_models()]
    return {m._meta.label: list(m._default_manager.order_by("pk").values()) for m in models}
