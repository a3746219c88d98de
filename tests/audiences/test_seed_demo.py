"""seed_demo creates the demo brand once and prints a working login."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from audiences.models import Audience, Brand, ConsentWording, Membership, SignupForm


@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_prints_the_login(settings: Any) -> None:
    settings.DEBUG = True
    out = StringIO()
    call_command("seed_demo", stdout=out)
    call_command("seed_demo", stdout=out)
    assert Brand.objects.count() == 1
    assert Audience.objects.count() == 2
    assert SignupForm.objects.count() == 1
    assert ConsentWording.objects.count() == 1
    membership = Membership.objects.get()
    assert membership.role == Membership.Role.OWNER
    text = out.getvalue()
    assert "http://127.0.0.1:8000/s/demo/newsletter/" in text
    assert "owner@demo.example / assent-demo" in text
    assert authenticate(username="owner@demo.example", password="assent-demo") == membership.user


@pytest.mark.django_db
def test_outside_debug_the_demo_password_is_random_and_printed(settings: Any) -> None:
    settings.DEBUG = False
    out = StringIO()
    call_command("seed_demo", stdout=out)
    password = out.getvalue().split("owner@demo.example / ")[1].split()[0]
    assert password != "assent-demo"
    assert authenticate(username="owner@demo.example", password=password) is not None
