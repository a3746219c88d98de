"""Operations on signup forms and their versioned consent wording.

Wording is never edited: a change is a new ``ConsentWording`` version, so every
consent event keeps pointing at (and copying) the text the person was shown.
Changes made by a team member are recorded in the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils.translation import gettext as _

from audiences import audit
from audiences.models import Audience, Brand, ConsentWording, SignupForm


class SignupFormError(Exception):
    """A change refused with a message for the team; ``field`` names the form field at fault, if any."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def parse_origins(text: str) -> list[str]:
    """Origins, one a line, normalised (no trailing slash, blank lines dropped).

    Raises ``ValidationError`` naming the first line that is not a bare origin like
    https://www.example.com (a path or query would never match a browser's Origin header).
    """
    lines = [line.strip().rstrip("/") for line in text.splitlines() if line.strip()]
    for line in lines:
        parts = urlsplit(line)
        if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path or parts.query or parts.fragment:
            raise ValidationError(_("%(line)s is not an origin like https://www.example.com") % {"line": line})
    return list(dict.fromkeys(lines))


def _new_version(form: SignupForm, text: str) -> tuple[ConsentWording, bool]:
    """The wording with ``text``: the current one if unchanged, else a new version (True)."""
    # Lock the form so two editors saving at once can't both take the same version number.
    SignupForm.objects.select_for_update().filter(pk=form.pk).first()
    current = form.wordings.order_by("-version").first()
    if current is not None and current.text == text:
        return current, False
    latest = form.wordings.aggregate(v=Max("version"))["v"] or 0
    return ConsentWording.objects.create(form=form, version=latest + 1, text=text), True


def set_wording(*, form: SignupForm, text: str, user: User | None = None) -> ConsentWording:
    """Make ``text`` the form's consent wording: a new version unless it is unchanged.

    A team member's change (``user`` given) is recorded in the audit log.
    """
    text = text.strip()
    with transaction.atomic():
        wording, created = _new_version(form, text)
        if created and user is not None:
            audit.record(
                brand=form.brand,
                user=user,
                action="form.wording_changed",
                target=form.slug,
                details={"version": wording.version},
            )
    return wording


def _check_audiences(brand: Brand, audiences: Sequence[Audience]) -> None:
    if any(a.brand_id != brand.pk for a in audiences):
        raise ValueError("a form can only offer its own brand's audiences")
    if not audiences:
        raise SignupFormError(_("Choose at least one audience."), field="audiences")


def _slug_taken(slug: str) -> SignupFormError:
    return SignupFormError(_("Another form already uses the address %(slug)s.") % {"slug": slug}, field="slug")


def create_form(
    *,
    brand: Brand,
    slug: str,
    title: str,
    audiences: Sequence[Audience],
    wording: str,
    intro: str = "",
    ask_name: bool = True,
    thank_you_url: str = "",
    allowed_origins: Sequence[str] = (),
    is_active: bool = True,
    user: User | None = None,
) -> SignupForm:
    """Create a form with its first wording version; raises ``SignupFormError`` if the slug is taken."""
    _check_audiences(brand, audiences)
    origins = parse_origins("\n".join(allowed_origins))
    try:
        with transaction.atomic():
            if SignupForm.objects.filter(brand=brand, slug=slug).exists():
                raise _slug_taken(slug)
            form = SignupForm.objects.create(
                brand=brand,
                slug=slug,
                title=title,
                intro=intro,
                ask_name=ask_name,
                thank_you_url=thank_you_url,
                allowed_origins="\n".join(origins),
                is_active=is_active,
            )
            form.audiences.set(audiences)
            set_wording(form=form, text=wording)
            audit.record(brand=brand, user=user, action="form.created", target=slug, details={"title": title})
    except IntegrityError as error:  # the same slug created between our check and insert
        raise _slug_taken(slug) from error
    return form


def update_form(
    *,
    form: SignupForm,
    user: User | None,
    title: str | None = None,
    slug: str | None = None,
    intro: str | None = None,
    audiences: Sequence[Audience] | None = None,
    ask_name: bool | None = None,
    thank_you_url: str | None = None,
    allowed_origins: Sequence[str] | None = None,
    is_active: bool | None = None,
    wording: str | None = None,
) -> SignupForm:
    """Change the given settings (``None`` leaves one as it is) and, if its text differs, the wording.

    1. Lock the form; refuse a slug another of the brand's forms uses.
    2. Save the changed fields; ``audiences`` replaces the live audiences offered, while
       archived ones stay linked, so unarchiving an audience puts it back on its forms.
    3. A different wording becomes a new version (``form.wording_changed``); other
       changes are one ``form.updated`` event listing the fields.
    """
    fields: dict[str, object] = {
        "title": title,
        "slug": slug,
        "intro": intro,
        "ask_name": ask_name,
        "thank_you_url": thank_you_url,
        "allowed_origins": "\n".join(parse_origins("\n".join(allowed_origins)))
        if allowed_origins is not None
        else None,
        "is_active": is_active,
    }
    if audiences is not None:
        _check_audiences(form.brand, audiences)
    try:
        with transaction.atomic():
            locked = SignupForm.objects.select_for_update().select_related("brand").get(pk=form.pk)
            changed = {k: v for k, v in fields.items() if v is not None and getattr(locked, k) != v}
            if "slug" in changed and SignupForm.objects.filter(brand=locked.brand, slug=slug).exists():
                raise _slug_taken(str(slug))
            for key, value in changed.items():
                setattr(locked, key, value)
            if changed:
                locked.save(update_fields=list(changed))
            names = sorted(changed)
            if audiences is not None and _set_live_audiences(locked, audiences):
                names = sorted([*names, "audiences"])
            if names:
                audit.record(
                    brand=locked.brand, user=user, action="form.updated", target=locked.slug, details={"fields": names}
                )
            if wording is not None:
                set_wording(form=locked, text=wording, user=user)
    except IntegrityError as error:
        raise _slug_taken(str(slug)) from error
    return locked


def _set_live_audiences(form: SignupForm, audiences: Sequence[Audience]) -> bool:
    """Offer exactly ``audiences`` among the live ones, keeping archived links. True if anything changed."""
    archived = set(form.audiences.filter(archived_at__isnull=False).values_list("pk", flat=True))
    before = set(form.audiences.values_list("pk", flat=True))
    after = archived | {a.pk for a in audiences}
    if after == before:
        return False
    form.audiences.set(after)
    return True
