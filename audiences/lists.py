"""Operations on a brand's audiences: create, edit, archive, unarchive.

Every change records an ``AuditEvent`` in its own transaction. Archiving hides an
audience from signup forms and the preference centre (they only offer audiences
with ``archived_at`` unset) but keeps its subscriptions and their history.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from audiences import audit
from audiences.models import Audience, Brand, SignupForm, Subscription


class AudienceError(Exception):
    """A change refused with a message for the team; ``field`` names the form field at fault, if any."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def with_counts(brand: Brand) -> QuerySet[Audience]:
    """The brand's audiences, live ones first, each annotated with its subscriptions per status.

    One grouped query (LEFT JOIN ... GROUP BY), however many audiences there are.
    """
    status = Subscription.Status

    def per(value: str) -> Count:
        return Count("subscriptions", filter=Q(subscriptions__status=value))

    return (
        Audience.objects.filter(brand=brand)
        .annotate(
            active_count=per(status.ACTIVE), pending_count=per(status.PENDING), inactive_count=per(status.INACTIVE)
        )
        .order_by(F("archived_at").asc(nulls_first=True), "name")
    )


def _name_taken(name: str) -> str:
    return _("There is already an audience called %(name)s.") % {"name": name}


def _ensure_name_free(brand: Brand, name: str, *, exclude_pk: int | None = None) -> None:
    # Case-insensitive, stricter than the database constraint: "News" and "news" side by
    # side would confuse the people choosing between them on a form.
    taken = Audience.objects.filter(brand=brand, name__iexact=name)
    if exclude_pk is not None:
        taken = taken.exclude(pk=exclude_pk)
    if taken.exists():
        raise AudienceError(_name_taken(name), field="name")


def create_audience(
    *, brand: Brand, user: User | None, name: str, description: str = "", is_public: bool = True
) -> Audience:
    name = name.strip()
    try:
        with transaction.atomic():
            _ensure_name_free(brand, name)
            audience = Audience.objects.create(brand=brand, name=name, description=description, is_public=is_public)
            audit.record(brand=brand, user=user, action="audience.created", target=name)
    except IntegrityError as error:  # someone created the same name between our check and insert
        raise AudienceError(_name_taken(name), field="name") from error
    return audience


def update_audience(
    *,
    audience: Audience,
    user: User | None,
    name: str | None = None,
    description: str | None = None,
    is_public: bool | None = None,
) -> Audience:
    """Change the given fields (``None`` leaves a field as it is); the audit log keeps which changed."""
    wanted = {"name": name.strip() if name is not None else None, "description": description, "is_public": is_public}
    try:
        with transaction.atomic():
            # Compare with the locked row, not the caller's copy, which may be stale.
            locked = Audience.objects.select_for_update().get(pk=audience.pk)
            changed = {k: v for k, v in wanted.items() if v is not None and getattr(locked, k) != v}
            if not changed:
                return locked
            if "name" in changed:
                _ensure_name_free(locked.brand, str(changed["name"]), exclude_pk=locked.pk)
            old_name = locked.name
            for key, value in changed.items():
                setattr(locked, key, value)
            locked.save(update_fields=list(changed))
            details: dict[str, object] = {"fields": sorted(changed)}
            if "name" in changed:
                details["name"] = locked.name
            audit.record(brand=locked.brand, user=user, action="audience.updated", target=old_name, details=details)
    except IntegrityError as error:  # a concurrent rename to the same name
        raise AudienceError(_name_taken(str(wanted["name"])), field="name") from error
    return locked


def _forms_left_without(audience: Audience) -> list[SignupForm]:
    """Active forms for which ``audience`` is the last live audience offered."""
    # Filtered by a subquery, not by joining ``audiences``: a join would also restrict the count.
    forms = (
        SignupForm.objects.filter(is_active=True, pk__in=audience.signup_forms.values("pk"))
        .annotate(live=Count("audiences", filter=Q(audiences__archived_at__isnull=True)))
        .filter(live__lte=1)
        .order_by("title")
    )
    return list(forms)


def archive_audience(*, audience: Audience, user: User | None) -> Audience:
    """Hide the audience from forms and the preference centre; subscriptions are kept.

    Refused while it is the only live audience of an active form: that form would offer
    nothing to join.
    """
    with transaction.atomic():
        # Lock the audience so two archive clicks write one audit event.
        locked = Audience.objects.select_for_update().get(pk=audience.pk)
        if locked.archived_at is not None:
            return locked
        stranded = _forms_left_without(locked)
        if stranded:
            raise AudienceError(
                _(
                    "%(name)s is the only audience offered by the form %(forms)s. "
                    "Offer another audience there, or deactivate the form, first."
                )
                % {"name": locked.name, "forms": ", ".join(f.title for f in stranded)}
            )
        locked.archived_at = timezone.now()
        locked.save(update_fields=["archived_at"])
        audit.record(brand=locked.brand, user=user, action="audience.archived", target=locked.name)
    return locked


def unarchive_audience(*, audience: Audience, user: User | None) -> Audience:
    with transaction.atomic():
        locked = Audience.objects.select_for_update().get(pk=audience.pk)
        if locked.archived_at is None:
            return locked
        locked.archived_at = None
        locked.save(update_fields=["archived_at"])
        audit.record(brand=locked.brand, user=user, action="audience.unarchived", target=locked.name)
    return locked
