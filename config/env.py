"""Typed readers for settings that come from the environment.

Every helper fails loudly with ``ImproperlyConfigured`` when a value is present
but malformed, so a typo in a deployment never silently falls back to a default.
A ``NAME_FILE`` variable, when set, is read instead of ``NAME`` (for secrets
mounted as files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured


def _raw(name: str) -> str | None:
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_name!r} cannot be read: {exc}") from exc
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str | None = None) -> str | None:
    value = _raw(name)
    return default if value is None else value


def env_required(name: str, why: str) -> str:
    value = _raw(name)
    if value is None:
        raise ImproperlyConfigured(f"{name} must be set: {why}")
    return value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true or false)")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number") from exc
    if number < minimum:
        raise ImproperlyConfigured(f"{name}={number} must be at least {minimum}")
    return number


def env_float(name: str, default: float) -> float:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number") from exc
    if not 0 <= number < float("inf"):
        raise ImproperlyConfigured(f"{name}={number} must be a non-negative number")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


@dataclass(frozen=True)
class EmailConfig:
    """What ``EMAIL_URL`` resolves to: a Django email backend and its options.

    ``esp`` names the anymail provider (``amazon_ses``, ``postmark``, …) and
    ``anymail`` holds its part of the ``ANYMAIL`` settings; both are empty for SMTP.
    """

    backend: str
    host: str = ""
    port: int = 0
    username: str = ""
    password: str = ""
    use_tls: bool = False
    use_ssl: bool = False
    timeout: int = 30
    esp: str = ""
    anymail: dict[str, Any] = field(default_factory=dict)


_SMTP_SCHEMES = {"smtp": (25, False, False), "submission": (587, True, False), "smtps": (465, False, True)}
# URL scheme -> anymail's ESP name (its backend module and settings prefix).
_ESP_SCHEMES = {
    "ses": "amazon_ses",
    "amazon-ses": "amazon_ses",
    "postmark": "postmark",
    "sendgrid": "sendgrid",
    "mailgun": "mailgun",
    "brevo": "brevo",
}
_MAILGUN_API_URLS = {"us": "https://api.mailgun.net/v3", "eu": "https://api.eu.mailgun.net/v3"}
_SCHEMES_HELP = "smtp://, submission://, smtps://, console://, " + ", ".join(f"{s}://" for s in _ESP_SCHEMES)


def parse_email_url(url: str) -> EmailConfig:
    """Parse ``EMAIL_URL``: plain SMTP, the console, or an email provider through django-anymail.

    - ``smtp://user:pass@host:port``, ``submission://`` (STARTTLS, port 587),
      ``smtps://`` (TLS, port 465); ``?timeout=N`` sets the socket timeout.
    - ``console://`` prints mail to stdout.
    - ``ses://KEY_ID:SECRET@?region=eu-west-1`` (or ``amazon-ses://``; without
      credentials boto3 finds its own, e.g. an instance role), ``postmark://TOKEN@``,
      ``sendgrid://API_KEY@``, ``mailgun://API_KEY@sender.domain?region=eu``,
      ``brevo://API_KEY@``. Credentials are percent-encoded (``/`` as ``%2F``).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        query = {key: values[-1] for key, values in parse_qs(parts.query, strict_parsing=bool(parts.query)).items()}
    except ValueError as exc:
        raise ImproperlyConfigured(f"EMAIL_URL has a malformed query string: {exc}") from exc
    if scheme == "console":
        return EmailConfig(backend="django.core.mail.backends.console.EmailBackend")
    if scheme in _ESP_SCHEMES:
        return _esp_config(_ESP_SCHEMES[scheme], parts, query)
    if scheme not in _SMTP_SCHEMES:
        raise ImproperlyConfigured(f"EMAIL_URL scheme {scheme!r} is not supported; use {_SCHEMES_HELP}")
    if not parts.hostname:
        raise ImproperlyConfigured("EMAIL_URL needs a host, e.g. smtp://mail.example.com:25")
    default_port, use_tls, use_ssl = _SMTP_SCHEMES[scheme]
    try:
        port = parts.port or default_port
        timeout = int(query.get("timeout", "30"))
    except ValueError as exc:
        raise ImproperlyConfigured(f"EMAIL_URL has a malformed port or timeout: {exc}") from exc
    if timeout < 1:
        raise ImproperlyConfigured(f"EMAIL_URL timeout={timeout} must be at least 1 second")
    return EmailConfig(
        backend="django.core.mail.backends.smtp.EmailBackend",
        host=parts.hostname,
        port=port,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        use_tls=use_tls,
        use_ssl=use_ssl,
        timeout=timeout,
    )


def _esp_config(esp: str, parts: SplitResult, query: dict[str, str]) -> EmailConfig:
    """The anymail backend and ``ANYMAIL`` settings for one provider's ``EMAIL_URL``."""
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError as exc:
        raise ImproperlyConfigured(f"EMAIL_URL for {scheme}:// is malformed: {exc}") from exc
    if port is not None or parts.path.strip("/"):
        raise ImproperlyConfigured(f"EMAIL_URL for {scheme}:// takes no port or path; see the README")
    prefix = esp.upper()
    if esp == "amazon_ses":
        anymail = _ses_settings(parts, query)
    elif esp == "mailgun":
        _only_options(scheme, query, {"region"})
        region = query.get("region", "us").lower()
        if region not in _MAILGUN_API_URLS:
            raise ImproperlyConfigured(f"EMAIL_URL region {region!r} for mailgun:// must be us or eu")
        anymail = {"MAILGUN_API_KEY": _api_key(scheme, parts), "MAILGUN_API_URL": _MAILGUN_API_URLS[region]}
        if parts.hostname:  # the sending domain; anymail otherwise takes the From address's domain
            anymail["MAILGUN_SENDER_DOMAIN"] = parts.hostname
    else:
        _only_options(scheme, query, {"message_stream"} if esp == "postmark" else set())
        if parts.hostname:
            raise ImproperlyConfigured(f"EMAIL_URL for {scheme}:// takes no host: write {scheme}://KEY@")
        setting = "SERVER_TOKEN" if esp == "postmark" else "API_KEY"
        anymail = {f"{prefix}_{setting}": _api_key(scheme, parts)}
        if query.get("message_stream"):  # Postmark: "broadcast" for marketing mail
            anymail["POSTMARK_MESSAGE_STREAM"] = query["message_stream"]
    return EmailConfig(backend=f"anymail.backends.{esp}.EmailBackend", esp=esp, anymail=anymail)


def _ses_settings(parts: SplitResult, query: dict[str, str]) -> dict[str, Any]:
    scheme = parts.scheme.lower()
    _only_options(scheme, query, {"region", "configuration_set"})
    if parts.hostname:
        raise ImproperlyConfigured(
            f"EMAIL_URL for {scheme}:// takes the region as ?region=, e.g. {scheme}://KEY_ID:SECRET@?region=eu-west-1"
        )
    key_id, secret = unquote(parts.username or ""), unquote(parts.password or "")
    if bool(key_id) != bool(secret):
        raise ImproperlyConfigured(f"EMAIL_URL for {scheme}:// needs both the access key id and the secret, or neither")
    client: dict[str, str] = {}
    if query.get("region"):
        client["region_name"] = query["region"]
    if key_id:
        client["aws_access_key_id"] = key_id
        client["aws_secret_access_key"] = secret
    anymail: dict[str, Any] = {"AMAZON_SES_CLIENT_PARAMS": client}
    if query.get("configuration_set"):  # SES event publishing (bounces, complaints) is set per configuration set
        anymail["AMAZON_SES_CONFIGURATION_SET_NAME"] = query["configuration_set"]
    return anymail


def _api_key(scheme: str, parts: SplitResult) -> str:
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    if user and password:
        raise ImproperlyConfigured(f"EMAIL_URL for {scheme}:// takes one key before the @, not user:password")
    if not (user or password):
        raise ImproperlyConfigured(f"EMAIL_URL for {scheme}:// needs the API key, e.g. {scheme}://KEY@")
    return user or password


def _only_options(scheme: str, query: dict[str, str], allowed: set[str]) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise ImproperlyConfigured(
            f"EMAIL_URL for {scheme}:// has unknown option(s) {', '.join(unknown)} (accepted: {accepted})"
        )
