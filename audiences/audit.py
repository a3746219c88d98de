"""The team's audit log: one function records a team action."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User

from audiences.models import AuditEvent, Brand


def record(
    *,
    brand: Brand,
    user: User | AnonymousUser | AbstractBaseUser | None,
    action: str,
    target: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record that ``user`` did ``action`` on ``target``; call inside the action's transaction."""
    actor = user if isinstance(user, User) else None
    return AuditEvent.objects.create(
        brand=brand,
        user=actor,
        user_email=getattr(actor, "email", "") if actor else "",
        action=action,
        target=target[:255],
        details=details or {},
    )
