"""Assent settings: one module, read from the environment.

Embedded defaults (SQLite, a filesystem broker, the dev outbox) apply when the
corresponding variable is unset; production sets ``DEBUG=false`` and the
variables listed in the README, and then must pass ``manage.py check --deploy``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_float, env_int, env_list, env_required, env_str, parse_email_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("ASSENT_VAR_DIR", str(BASE_DIR / "var")) or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", True)
_PRODUCTION_WHY = "it has no safe default when DEBUG is off"

if DEBUG:
    SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-key-change-me-0123456789abcdef") or ""
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
    SITE_URL = env_str("SITE_URL", f"http://127.0.0.1:{env_int('WEB_PORT', 8000, minimum=1)}") or ""
else:
    SECRET_KEY = env_required("SECRET_KEY", _PRODUCTION_WHY)
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [])
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured(f"ALLOWED_HOSTS must be set: {_PRODUCTION_WHY}")
    SITE_URL = env_required("SITE_URL", "every link in every email is built on it")

SITE_URL = SITE_URL.rstrip("/")
_site = urlsplit(SITE_URL)
if _site.scheme not in {"http", "https"} or not _site.netloc:
    raise ImproperlyConfigured(f"SITE_URL={SITE_URL!r} must be an absolute http(s) origin")
SITE_ORIGIN = f"{_site.scheme}://{_site.netloc}"
SITE_NAME = env_str("SITE_NAME", "Assent") or "Assent"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.humanize",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "anymail",
    "audiences",
    "campaigns",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "audiences.context_processors.site",
                "audiences.dashboard_context.dashboard",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'assent.sqlite3'}") or ""
try:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60))
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is malformed: {exc}") from exc
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # The web server, the worker and beat share one file: WAL and immediate
    # transactions avoid "database is locked" under that light concurrency.
    _db["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    _db["CONN_MAX_AGE"] = 0
else:
    _db["CONN_HEALTH_CHECKS"] = True
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache, Celery ---------------------------------------------------

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "assent",
        }
    }
else:
    # Shared between the web and worker processes without any server.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

_broker_dir = VAR_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://") or ""
if CELERY_BROKER_URL.startswith("filesystem://"):
    for _sub in ("queue", "processed"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_IGNORE_RESULT = True
# The database is the source of truth for work; late acks only make a lost
# task rarer, never a duplicate-visible one (tasks claim rows first).
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "purge-unconfirmed": {
        "task": "audiences.tasks.purge_unconfirmed",
        "schedule": 3600.0,
    },
    "reconcile-deliveries": {
        "task": "campaigns.tasks.reconcile_deliveries",
        "schedule": float(env_int("DELIVERY_RECONCILE_SECONDS", 15, minimum=1)),
    },
}

# --- Campaign delivery ---------------------------------------------------------------

DELIVERY_BATCH_SIZE = env_int("DELIVERY_BATCH_SIZE", 200, minimum=1)
# A worker that dies holding a batch loses its lease after this long; the reconciler re-queues it.
DELIVERY_LEASE_SECONDS = env_int("DELIVERY_LEASE_SECONDS", 120, minimum=5)
DELIVERY_MAX_ATTEMPTS = env_int("DELIVERY_MAX_ATTEMPTS", 5, minimum=1)
# Parallel chains of batch tasks per campaign (one per worker process is plenty).
DELIVERY_PARALLEL = env_int("DELIVERY_PARALLEL", 2, minimum=1)

# --- Email --------------------------------------------------------------------

DEV_OUTBOX_DIR = VAR_DIR / "outbox"
DEV_OUTBOX_PORT = env_int("DEV_OUTBOX_PORT", 1025, minimum=1)
_email_url = env_str("EMAIL_URL")
if _email_url is None:
    if not DEBUG:
        raise ImproperlyConfigured(f"EMAIL_URL must be set: {_PRODUCTION_WHY}")
    # The dev outbox is a real SMTP server (aiosmtpd) started by `make run`.
    _email_url = f"smtp://127.0.0.1:{DEV_OUTBOX_PORT}"
    DEV_OUTBOX_ENABLED = True
else:
    DEV_OUTBOX_ENABLED = False
EMAIL = parse_email_url(_email_url)
EMAIL_BACKEND = EMAIL.backend
EMAIL_HOST = EMAIL.host
EMAIL_PORT = EMAIL.port
EMAIL_HOST_USER = EMAIL.username
EMAIL_HOST_PASSWORD = EMAIL.password
EMAIL_USE_TLS = EMAIL.use_tls
EMAIL_USE_SSL = EMAIL.use_ssl
EMAIL_TIMEOUT = EMAIL.timeout
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Assent <noreply@localhost>") or ""
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Email provider webhooks (django-anymail, mounted at /webhooks/anymail/) ----------

# HTTP basic auth "user:password" the provider sends; several, comma-separated, while rotating.
# Unset: every webhook request is refused (campaigns/webhook_urls.py); required in production
# when EMAIL_URL names a provider.
ANYMAIL_WEBHOOK_SECRETS = env_list("ANYMAIL_WEBHOOK_SECRET", [])
for _secret in ANYMAIL_WEBHOOK_SECRETS:
    if ":" not in _secret.strip(":"):
        raise ImproperlyConfigured("ANYMAIL_WEBHOOK_SECRET must be user:password (several separated by commas)")
if EMAIL.esp and not DEBUG and not ANYMAIL_WEBHOOK_SECRETS:
    raise ImproperlyConfigured(
        f"ANYMAIL_WEBHOOK_SECRET must be set: EMAIL_URL sends through {EMAIL.esp}, whose bounce and "
        "complaint webhooks must be authenticated"
    )
ANYMAIL: dict[str, Any] = {**EMAIL.anymail, "WEBHOOK_SECRET": ANYMAIL_WEBHOOK_SECRETS}
# Provider signatures, checked in addition to the basic auth.
_mailgun_key = env_str("MAILGUN_WEBHOOK_SIGNING_KEY")
if EMAIL.esp == "mailgun" and not DEBUG and not _mailgun_key:
    raise ImproperlyConfigured(
        "MAILGUN_WEBHOOK_SIGNING_KEY must be set: Mailgun signs its webhooks with it (Sending > Webhooks)"
    )
if _mailgun_key:
    ANYMAIL["MAILGUN_WEBHOOK_SIGNING_KEY"] = _mailgun_key
# SendGrid's signed Event Webhook: its public key, base64 without the PEM lines.
_sendgrid_key = env_str("SENDGRID_TRACKING_WEBHOOK_VERIFICATION_KEY")
if _sendgrid_key:
    try:
        base64.b64decode(_sendgrid_key, validate=True)
    except ValueError as exc:
        raise ImproperlyConfigured(
            "SENDGRID_TRACKING_WEBHOOK_VERIFICATION_KEY must be the base64 public key without the PEM lines"
        ) from exc
    ANYMAIL["SENDGRID_TRACKING_WEBHOOK_VERIFICATION_KEY"] = _sendgrid_key

# --- Bounces and complaints (campaigns/bounces.py) -----------------------------------

# Plain SMTP: the envelope sender becomes a per-delivery VERP address on this mailbox's domain,
# e.g. bounces+d123.ab12cd34ef@mail.example.com; empty: the sender address, no VERP.
BOUNCE_ADDRESS = env_str("BOUNCE_ADDRESS", "") or ""
if BOUNCE_ADDRESS and "@" not in BOUNCE_ADDRESS.strip("@"):
    raise ImproperlyConfigured(f"BOUNCE_ADDRESS={BOUNCE_ADDRESS!r} is not an email address")
# The mailbox those bounces (and feedback-loop reports) arrive in, read by `manage.py read_bounces`
# (campaigns/mailbox.py): imap[s]://user:password@host[:port]/INBOX or pop3[s]://user:password@host[:port].
BOUNCE_MAILBOX_URL = env_str("BOUNCE_MAILBOX_URL", "") or ""
if BOUNCE_MAILBOX_URL and urlsplit(BOUNCE_MAILBOX_URL).scheme not in {"imap", "imaps", "pop3", "pop3s"}:
    raise ImproperlyConfigured("BOUNCE_MAILBOX_URL must start with imap://, imaps://, pop3:// or pop3s://")
# Soft bounces suppress an address after this many in a row spanning at least this many days.
SOFT_BOUNCE_LIMIT = env_int("SOFT_BOUNCE_LIMIT", 3, minimum=1)
SOFT_BOUNCE_DAYS = env_int("SOFT_BOUNCE_DAYS", 14, minimum=0)
# A brand's daily complaint rate: above the first, owners are warned; at the second, sending stops.
COMPLAINT_WARN_RATE = env_float("COMPLAINT_WARN_RATE", 0.001)
COMPLAINT_STOP_RATE = env_float("COMPLAINT_STOP_RATE", 0.003)

# --- Imports ---------------------------------------------------------------------------

# Uploaded CSV files; web and worker processes must share it (shared storage on several hosts).
IMPORT_DIR = Path(env_str("IMPORT_DIR", str(VAR_DIR / "imports")) or VAR_DIR / "imports")
IMPORT_MAX_BYTES = env_int("IMPORT_MAX_BYTES", 200 * 1024 * 1024, minimum=1024)

# --- Consent, signup and anti-abuse ---------------------------------------------

CONFIRM_LINK_DAYS = env_int("CONFIRM_LINK_DAYS", 7, minimum=1)
# Manage and unsubscribe links work this long after the message that carried them (CASL: at least 60).
MANAGE_LINK_DAYS = env_int("MANAGE_LINK_DAYS", 90, minimum=60)
PENDING_PURGE_DAYS = env_int("PENDING_PURGE_DAYS", 30, minimum=1)
CONFIRMATION_MIN_INTERVAL_MINUTES = env_int("CONFIRMATION_MIN_INTERVAL_MINUTES", 10)
CONFIRMATION_DAILY_CAP = env_int("CONFIRMATION_DAILY_CAP", 3, minimum=1)
# First retry delay after a transient SMTP failure; doubles each time, capped at 10 minutes.
EMAIL_RETRY_BACKOFF_SECONDS = env_int("EMAIL_RETRY_BACKOFF_SECONDS", 10, minimum=1)
SIGNUP_MIN_FILL_SECONDS = env_int("SIGNUP_MIN_FILL_SECONDS", 3)
SIGNUP_LIMIT_PER_IP_PER_HOUR = env_int("SIGNUP_LIMIT_PER_IP_PER_HOUR", 30, minimum=1)
SIGNUP_LIMIT_PER_FORM_PER_MINUTE = env_int("SIGNUP_LIMIT_PER_FORM_PER_MINUTE", 300, minimum=1)

# --- Auth: django-allauth, by email, verified, with MFA ---------------------------

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"
# Teams are invited by an owner; OPEN_SIGNUP=true lets anyone create an account.
OPEN_SIGNUP = env_bool("OPEN_SIGNUP", False)
ACCOUNT_ADAPTER = "audiences.accounts.AccountAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = "username"
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_EMAIL_VERIFICATION_BY_CODE_ENABLED = False
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_SESSION_REMEMBER = None
ACCOUNT_PREVENT_ENUMERATION = True
ACCOUNT_EMAIL_SUBJECT_PREFIX = f"[{SITE_NAME}] "
ACCOUNT_DEFAULT_HTTP_PROTOCOL = _site.scheme
ACCOUNT_RATE_LIMITS = {
    "login": "30/m/ip",
    "login_failed": "10/m/ip,5/5m/key",
    "signup": "20/m/ip",
    "reset_password": "20/m/ip,5/m/key",
    "reset_password_from_key": "20/m/ip",
    "confirm_email": "1/3m/key",
}
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes", "webauthn"]
MFA_PASSKEY_LOGIN_ENABLED = True
MFA_TOTP_ISSUER = SITE_NAME
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = DEBUG
ALLAUTH_TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 60 * 60 * 12, minimum=300)
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True

# --- i18n, static ---------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
# Each language is named in itself, so a reader finds theirs whatever the page's language.
LANGUAGES = [("en", "English"), ("de", "Deutsch")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Security -------------------------------------------------------------------

USE_X_FORWARDED_PROTO = env_bool("USE_X_FORWARDED_PROTO", False)
if USE_X_FORWARDED_PROTO:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Client addresses are taken from X-Forwarded-For only behind a trusted proxy.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
CSRF_TRUSTED_ORIGINS = [SITE_ORIGIN]
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO") or "INFO"},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "mail.log": {"level": "WARNING"}},
}
