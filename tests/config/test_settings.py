"""Settings come from the environment and fail loudly when malformed or missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_list, env_str, parse_email_url

ROOT = Path(__file__).resolve().parents[2]


def test_env_helpers_parse_and_refuse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("X_BOOL", "yes")
    monkeypatch.setenv("X_INT", "42")
    monkeypatch.setenv("X_LIST", "a.example, b.example,")
    assert env_bool("X_BOOL", False) is True
    assert env_int("X_INT", 0) == 42
    assert env_list("X_LIST", []) == ["a.example", "b.example"]
    assert env_str("X_UNSET", "fallback") == "fallback"
    monkeypatch.setenv("X_BOOL", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_BOOL"):
        env_bool("X_BOOL", False)
    monkeypatch.setenv("X_INT", "lots")
    with pytest.raises(ImproperlyConfigured, match="X_INT"):
        env_int("X_INT", 0)
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("X_SECRET_FILE", str(secret))
    assert env_str("X_SECRET") == "from-a-file"


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "ssl", "user"),
    [
        ("smtp://127.0.0.1:2525", "127.0.0.1", 2525, False, False, ""),
        ("submission://me%40x.example:p%40ss@mail.example", "mail.example", 587, True, False, "me@x.example"),
        ("smtps://mail.example", "mail.example", 465, False, True, ""),
    ],
)
def test_email_url_forms(url: str, host: str, port: int, tls: bool, ssl: bool, user: str) -> None:
    config = parse_email_url(url)
    assert (config.host, config.port, config.use_tls, config.use_ssl, config.username) == (host, port, tls, ssl, user)


@pytest.mark.parametrize("url", ["ftp://x", "smtp://", "smtp://host:notaport"])
def test_bad_email_urls_are_refused(url: str) -> None:
    with pytest.raises(ImproperlyConfigured):
        parse_email_url(url)


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "SITE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    result = _manage("check", DEBUG="false", ASSENT_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_settings_pass_check_deploy(tmp_path: Path) -> None:
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="false",
        SECRET_KEY="x" * 30 + "-a-long-random-production-secret-value-0123456789",
        ALLOWED_HOSTS="lists.example.com",
        SITE_URL="https://lists.example.com",
        EMAIL_URL="smtp://127.0.0.1:25",
        ASSENT_VAR_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout
