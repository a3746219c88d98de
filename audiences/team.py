"""Brands and their teams: operations called by the dashboard and commands.

Every operation records an ``AuditEvent`` in its own transaction.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from audiences import audit
from audiences.accounts import INVITATION_SESSION_KEY
from audiences.emails import make_message, send_later
from audiences.models import Brand, Invitation, Membership

INVITATION_DAYS = 7

BRAND_SETTINGS = [
    "name",
    "from_name",
    "from_email",
    "reply_to",
    "postal_address",
    "privacy_url",
    "default_language",
    "time_zone",
    "frequency_limit",
    "allowed_origins",
]


class TeamError(Exception):
    """A team change that would leave the brand in a bad state, with a message for the owner."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_brand(*, name: str, slug: str, owner: User, from_email: str, **fields: Any) -> Brand:
    with transaction.atomic():
        brand = Brand.objects.create(
            name=name, slug=slug, from_name=fields.pop("from_name", name), from_email=from_email, **fields
        )
        Membership.objects.create(user=owner, brand=brand, role=Membership.Role.OWNER)
        audit.record(brand=brand, user=owner, action="brand.created", target=brand.slug)
    return brand


def update_settings(*, brand: Brand, user: User, changes: dict[str, Any]) -> Brand:
    """Save changed brand settings; the audit log keeps which fields changed."""
    changed = {k: v for k, v in changes.items() if k in BRAND_SETTINGS and getattr(brand, k) != v}
    if not changed:
        return brand
    with transaction.atomic():
        for key, value in changed.items():
            setattr(brand, key, value)
        brand.save(update_fields=list(changed))
        audit.record(brand=brand, user=user, action="brand.settings_changed", details={"fields": sorted(changed)})
    return brand


def invite(*, brand: Brand, user: User, email: str, role: str) -> tuple[Invitation, str]:
    """Create an invitation and email it. Returns it with the plain token (only the hash is stored)."""
    token = secrets.token_urlsafe(32)
    email = email.strip().lower()
    with transaction.atomic():
        if Membership.objects.filter(brand=brand, user__email__iexact=email).exists():
            raise TeamError(f"{email} is already on the team.")
        Invitation.objects.filter(brand=brand, email=email, accepted_at__isnull=True, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        invitation = Invitation.objects.create(
            brand=brand,
            email=email,
            role=role,
            token_hash=_hash(token),
            invited_by=user,
            expires_at=timezone.now() + timedelta(days=INVITATION_DAYS),
        )
        audit.record(brand=brand, user=user, action="member.invited", target=email, details={"role": role})
        url = settings.SITE_URL + reverse("invitation", kwargs={"token": token})
        message = make_message(
            "invitation",
            to=email,
            context={
                "brand": brand,
                "inviter": user,
                "role": invitation.get_role_display(),
                "url": url,
                "days": INVITATION_DAYS,
                "SITE_NAME": settings.SITE_NAME,
            },
            from_email=settings.DEFAULT_FROM_EMAIL,
            language=brand.default_language,
        )
        send_later(message)
    return invitation, token


def find_invitation(token: str) -> Invitation | None:
    return Invitation.objects.select_related("brand").filter(token_hash=_hash(token)).first()


def open_invitation_from_session(request: HttpRequest) -> Invitation | None:
    token = request.session.get(INVITATION_SESSION_KEY) if hasattr(request, "session") else None
    invitation = find_invitation(token) if token else None
    return invitation if invitation is not None and invitation.is_open else None


def accept(*, invitation: Invitation, user: User) -> Membership:
    """Join the brand with the invited role. The account must own the invited address (verified)."""
    if not invitation.is_open:
        raise TeamError("This invitation has expired, was revoked or was already used.")
    if not EmailAddress.objects.filter(user=user, email__iexact=invitation.email, verified=True).exists():
        raise TeamError(
            f"This invitation is for {invitation.email}. Sign in with that address (verified) to accept it."
        )
    with transaction.atomic():
        claimed = Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True).update(
            accepted_at=timezone.now(), accepted_by=user
        )
        if claimed != 1:
            raise TeamError("This invitation was already used.")
        membership, _ = Membership.objects.get_or_create(
            user=user, brand=invitation.brand, defaults={"role": invitation.role}
        )
        audit.record(
            brand=invitation.brand,
            user=user,
            action="member.joined",
            target=user.email,
            details={"role": invitation.role},
        )
    return membership


def revoke(*, invitation: Invitation, user: User) -> Invitation:
    with transaction.atomic():
        Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        audit.record(brand=invitation.brand, user=user, action="member.invitation_revoked", target=invitation.email)
    invitation.refresh_from_db()
    return invitation


def _owners_left(brand: Brand, without: Membership) -> int:
    return Membership.objects.filter(brand=brand, role=Membership.Role.OWNER).exclude(pk=without.pk).count()


def change_role(*, membership: Membership, user: User, role: str) -> Membership:
    with transaction.atomic():
        locked = Membership.objects.select_for_update().get(pk=membership.pk)
        if locked.role == role:
            return locked
        if locked.role == Membership.Role.OWNER and not _owners_left(locked.brand, locked):
            raise TeamError("A brand needs at least one owner.")
        old = locked.role
        locked.role = role
        locked.save(update_fields=["role"])
        audit.record(
            brand=locked.brand,
            user=user,
            action="member.role_changed",
            target=locked.user.email,
            details={"from": old, "to": role},
        )
    return locked


def remove_member(*, membership: Membership, user: User) -> None:
    with transaction.atomic():
        locked = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk)
        if locked.role == Membership.Role.OWNER and not _owners_left(locked.brand, locked):
            raise TeamError("A brand needs at least one owner.")
        email = locked.user.email
        locked.delete()
        audit.record(brand=membership.brand, user=user, action="member.removed", target=email)
