"""Copy-paste code for putting a signup form on a brand's own site."""

from __future__ import annotations

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import translation

from audiences.models import SignupForm


def embed_snippet(form: SignupForm) -> str:
    """A plain HTML form that posts cross-origin to the hosted endpoint (no JavaScript)."""
    with translation.override(form.brand.default_language):
        return render_to_string(
            "audiences/embed_snippet.html",
            {
                "form": form,
                "action": settings.SITE_URL + reverse("audiences:signup", args=[form.brand.slug, form.slug]),
                "audiences": form.audiences.filter(archived_at__isnull=True).order_by("name"),
                "wording": form.current_wording(),
            },
        ).strip()


def iframe_snippet(form: SignupForm) -> str:
    src = settings.SITE_URL + reverse("audiences:signup_embed", args=[form.brand.slug, form.slug])
    title = form.title.replace('"', "&quot;")
    return (
        f'<iframe src="{src}" title="{title}" loading="lazy" '
        'style="width:100%;max-width:480px;height:560px;border:0"></iframe>'
    )
