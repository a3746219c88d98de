"""/healthz reports database and broker reachability."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from config.celery import app as celery_app


@pytest.mark.django_db
def test_healthy(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_a_broker_that_is_down_is_a_503(client: Client, monkeypatch: Any) -> None:
    monkeypatch.setattr(celery_app.conf, "broker_write_url", "redis://127.0.0.1:1/0")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "broker": "down"}


def test_robots_keeps_crawlers_off_personal_links(client: Client) -> None:
    response = client.get("/robots.txt")
    assert response.status_code == 200
    assert "Disallow: /c/" in response.content.decode()
