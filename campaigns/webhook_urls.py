"""anymail's webhook URLs (``/webhooks/anymail/<esp>/tracking/``, ``…/inbound/``), behind our basic-auth gate.

anymail checks ``ANYMAIL["WEBHOOK_SECRET"]`` itself, but with no secret it
accepts everyone (with a warning), and the view of a provider we are not
configured for fails with a 500 before it checks anything. The gate runs
first, so strangers reach neither: no secret
configured refuses every request (403), missing or wrong credentials get 401
(Amazon SNS sends its credentials only after that challenge). A request that
passes goes to anymail's view unchanged, which checks the credentials again,
verifies the provider's signature where there is one, and sends the signals
that ``campaigns/webhooks.py`` records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from anymail import urls as anymail_urls
from anymail.utils import get_request_basic_auth
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern
from django.utils.crypto import constant_time_compare

log = logging.getLogger(__name__)

app_name = anymail_urls.app_name


def _authorised(request: HttpRequest) -> bool | None:
    """True for good credentials, False for missing or wrong ones, None when no secret is configured."""
    secrets = settings.ANYMAIL.get("WEBHOOK_SECRET") or []
    if isinstance(secrets, str):  # anymail also takes a single string
        secrets = [secrets]
    if not secrets:
        return None
    given = get_request_basic_auth(request) or ""
    # A list, not a generator: every secret is compared, so timing tells nothing about which matched.
    return any([constant_time_compare(given, secret) for secret in secrets])


def _gated(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    # wraps() copies csrf_exempt and login_not_required, which anymail sets on its views.
    @wraps(view)
    def gated(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        verdict = _authorised(request)
        if verdict is None:
            log.warning("webhook %s refused: ANYMAIL_WEBHOOK_SECRET is not set", request.path)
            return HttpResponse("Webhooks are disabled until ANYMAIL_WEBHOOK_SECRET is set.\n", status=403)
        if not verdict:
            log.warning("webhook %s refused: missing or wrong basic auth", request.path)
            response = HttpResponse("Authentication required.\n", status=401)
            response["WWW-Authenticate"] = 'Basic realm="Assent webhooks"'
            return response
        return view(request, *args, **kwargs)

    return gated


urlpatterns = [
    URLPattern(entry.pattern, _gated(entry.callback), entry.default_args, entry.name)
    for entry in anymail_urls.urlpatterns
    if isinstance(entry, URLPattern)
]
