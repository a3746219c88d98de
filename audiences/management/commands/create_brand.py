"""Create a brand with a first owner (an existing user, e.g. from createsuperuser)."""

from __future__ import annotations

from typing import Any

from allauth.account.models import EmailAddress
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError
from django.utils.text import slugify

from audiences import team


class Command(BaseCommand):
    help = "Create a brand and make an existing user its owner."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="the brand's name, e.g. 'Acme Tea'")
        parser.add_argument("--owner", required=True, help="the owner's email (an existing user)")
        parser.add_argument("--slug", help="URL slug (default: from the name)")
        parser.add_argument("--from-email", required=True, help="the sender address of the brand's emails")

    def handle(self, *args: Any, name: str, owner: str, slug: str | None, from_email: str, **options: Any) -> None:
        user = User.objects.filter(email__iexact=owner).first() or User.objects.filter(username=owner).first()
        if user is None:
            raise CommandError(f"No user with email {owner}: create one first (manage.py createsuperuser).")
        if not user.email:
            user.email = owner
            user.save(update_fields=["email"])
        # The operator vouches for the owner's address, so allauth's mandatory verification is satisfied.
        EmailAddress.objects.update_or_create(
            user=user, email__iexact=user.email, defaults={"email": user.email, "verified": True, "primary": True}
        )
        try:
            brand = team.create_brand(name=name, slug=slug or slugify(name), owner=user, from_email=from_email)
        except IntegrityError as exc:
            raise CommandError(f"A brand with slug {slug or slugify(name)!r} already exists.") from exc
        self.stdout.write(self.style.SUCCESS(f"Created brand {brand.name} (/b/{brand.slug}/) owned by {user.email}."))
