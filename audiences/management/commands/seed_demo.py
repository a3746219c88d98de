"""Create (or bring up to date) a demo brand with two audiences, a form and an owner."""

from __future__ import annotations

import secrets
from typing import Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.urls import reverse

from audiences.models import Audience, Brand, Membership, SignupForm
from audiences.signup_forms import create_form, set_wording

DEMO_EMAIL = "owner@demo.example"
WORDING = (
    "Yes, send me the emails I ticked above. I can unsubscribe at any time with the link "
    "in every email. Demo Coffee Roasters processes my address as described in its privacy policy."
)


class Command(BaseCommand):
    help = "Create the demo brand, audiences, signup form and owner login (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--password", help="the owner's password (default: a dev password, or random)")

    def handle(self, *args: Any, password: str | None, **options: Any) -> None:
        password = password or ("assent-demo" if settings.DEBUG else secrets.token_urlsafe(12))
        with transaction.atomic():
            brand, _ = Brand.objects.get_or_create(
                slug="demo",
                defaults={
                    "name": "Demo Coffee Roasters",
                    "from_name": "Demo Coffee Roasters",
                    "from_email": "hello@demo.example",
                    "reply_to": "support@demo.example",
                    "postal_address": "Demo Coffee Roasters, 1 Bean Street, 10115 Berlin, Germany",
                    "privacy_url": "https://demo.example/privacy",
                    "time_zone": "Europe/Berlin",
                },
            )
            news, _ = Audience.objects.get_or_create(
                brand=brand,
                name="Weekly news",
                defaults={"description": "Our roasting notes and new arrivals, every Friday."},
            )
            updates, _ = Audience.objects.get_or_create(
                brand=brand,
                name="Product updates",
                defaults={"description": "Occasional news about new blends and equipment."},
            )
            form = SignupForm.objects.filter(brand=brand, slug="newsletter").first()
            if form is None:
                form = create_form(
                    brand=brand,
                    slug="newsletter",
                    title="Join our coffee letters",
                    intro="Tell us what you'd like to hear about. We only write when you asked us to.",
                    audiences=[news, updates],
                    wording=WORDING,
                    allowed_origins=["http://localhost:8080"],
                )
            elif not form.wordings.exists():
                set_wording(form=form, text=WORDING)
            user = self._owner(password)
            Membership.objects.update_or_create(user=user, brand=brand, defaults={"role": Membership.Role.OWNER})

        site = settings.SITE_URL
        self.stdout.write(self.style.SUCCESS("Demo brand ready."))
        self.stdout.write(f"  Signup form:  {site}{reverse('audiences:signup', args=[brand.slug, form.slug])}")
        self.stdout.write(f"  Dashboard:    {site}{reverse('dash:home', args=[brand.slug])}")
        self.stdout.write(f"  Admin:        {site}{reverse('admin:index')}")
        self.stdout.write(f"  Login:        {DEMO_EMAIL} / {password}")
        if settings.DEBUG and settings.DEV_OUTBOX_ENABLED:
            self.stdout.write(f"  Dev outbox:   {site}/dev/outbox/")

    def _owner(self, password: str) -> Any:
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username=DEMO_EMAIL, defaults={"email": DEMO_EMAIL})
        user.email = DEMO_EMAIL
        user.is_staff = True
        user.is_superuser = True
        user.set_password(password)
        user.save()
        EmailAddress.objects.update_or_create(user=user, email=DEMO_EMAIL, defaults={"verified": True, "primary": True})
        return user
