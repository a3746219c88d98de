"""Operations on signup forms and their versioned consent wording."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction
from django.db.models import Max

from audiences.models import Audience, Brand, ConsentWording, SignupForm


def set_wording(*, form: SignupForm, text: str) -> ConsentWording:
    """Make ``text`` the form's consent wording: a new version unless it is unchanged."""
    text = text.strip()
    with transaction.atomic():
        SignupForm.objects.select_for_update().filter(pk=form.pk).first()
        current = form.wordings.order_by("-version").first()
        if current is not None and current.text == text:
            return current
        latest = form.wordings.aggregate(v=Max("version"))["v"] or 0
        return ConsentWording.objects.create(form=form, version=latest + 1, text=text)


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
) -> SignupForm:
    if any(a.brand_id != brand.pk for a in audiences):
        raise ValueError("a form can only offer its own brand's audiences")
    with transaction.atomic():
        form = SignupForm.objects.create(
            brand=brand,
            slug=slug,
            title=title,
            intro=intro,
            ask_name=ask_name,
            thank_you_url=thank_you_url,
            allowed_origins="\n".join(allowed_origins),
        )
        form.audiences.set(audiences)
        set_wording(form=form, text=wording)
    return form
