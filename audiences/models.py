"""Brands, their audiences and subscribers, and the evidence of consent.

Status fields change only through the operations in ``audiences/consent.py``;
nothing else calls ``save()`` on a status.
"""

from __future__ import annotations

import hashlib
import secrets
import zoneinfo
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


def validate_time_zone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(_("%(value)s is not a time zone like Europe/Berlin."), params={"value": value}) from exc


def new_token_secret() -> str:
    return secrets.token_urlsafe(24)


def email_hash(normalised_email: str) -> str:
    """The key under which a suppressed address is remembered without keeping it."""
    return hashlib.sha256(normalised_email.encode()).hexdigest()


class Brand(models.Model):
    """The tenant: everything else belongs to exactly one brand."""

    name = models.CharField(_("name"), max_length=120)
    slug = models.SlugField(_("slug"), max_length=60, unique=True)
    from_name = models.CharField(_("sender name"), max_length=120)
    from_email = models.EmailField(_("sender address"))
    reply_to = models.EmailField(_("reply-to address"), blank=True)
    postal_address = models.TextField(
        _("postal address"), blank=True, help_text=_("Shown in the footer of every campaign.")
    )
    privacy_url = models.URLField(_("privacy policy URL"), blank=True)
    default_language = models.CharField(_("default language"), max_length=8, choices=settings.LANGUAGES, default="en")
    time_zone = models.CharField(
        _("time zone"),
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text=_("Campaign schedules are entered in this time zone, e.g. Europe/Berlin."),
    )
    frequency_limit = models.PositiveIntegerField(
        _("frequency limit"),
        default=3,
        help_text=_("At most this many campaign messages per subscriber per 7 days."),
    )
    allowed_origins = models.TextField(
        _("allowed embedding origins"),
        blank=True,
        help_text=_(
            "One origin per line (e.g. https://www.example.com) allowed to embed and post all of this brand's forms."
        ),
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", _("Owner")
        EDITOR = "editor", _("Editor")
        VIEWER = "viewer", _("Viewer")

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    brand = models.ForeignKey(Brand, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "brand"], name="membership_unique_user_brand")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.brand} ({self.role})"


class Audience(models.Model):
    """A list a consumer can join inside a brand."""

    brand = models.ForeignKey(Brand, on_delete=models.CASCADE, related_name="audiences")
    name = models.CharField(_("public name"), max_length=120)
    description = models.TextField(_("public description"), blank=True)
    is_public = models.BooleanField(
        _("public"), default=True, help_text=_("Shown in the preference centre for anyone to join.")
    )
    archived_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["brand", "name"], name="audience_unique_brand_name")]

    def __str__(self) -> str:
        return self.name


class SubscriberQuerySet(models.QuerySet["Subscriber"]):
    def eligible(
        self, *, audience_ids: list[int], campaign_id: int | None = None, now: datetime | None = None
    ) -> SubscriberQuerySet:
        """THE definition of who may be sent a message about these audiences, now.

        Confirmed, with an active subscription to at least one of the audiences,
        not paused, whose address is not on the brand's suppression list, and
        under both frequency limits: the brand's (at most N campaign messages
        per 7 days) and the person's own (as published, at most weekly, at
        most monthly), counting messages other than ``campaign_id``'s.
        Used when planning recipients and again, per batch, right before sending.
        """
        from campaigns.models import Delivery

        now = now or timezone.now()
        active = Subscription.objects.filter(
            subscriber=models.OuterRef("pk"), audience_id__in=audience_ids, status=Subscription.Status.ACTIVE
        )
        suppressed = Suppression.objects.filter(
            brand=models.OuterRef("brand"), email_hash=models.OuterRef("email_hash")
        )

        def sent_since(days: int) -> Coalesce:
            recent = (
                Delivery.objects.filter(subscriber=models.OuterRef("pk"), sent_at__gte=now - timedelta(days=days))
                .exclude(campaign_id=campaign_id or 0)
                .order_by()
                .values("subscriber")
                .annotate(n=models.Count("*"))
                .values("n")
            )
            return Coalesce(models.Subquery(recent, output_field=models.IntegerField()), 0)

        frequency = Subscriber.Frequency
        return (
            self.filter(status=Subscriber.Status.CONFIRMED)
            .filter(models.Q(paused_until__isnull=True) | models.Q(paused_until__lte=now))
            .filter(models.Exists(active))
            .exclude(models.Exists(suppressed))
            .alias(sent_7d=sent_since(7), sent_30d=sent_since(30))
            .filter(sent_7d__lt=models.F("brand__frequency_limit"))
            .filter(
                models.Q(frequency=frequency.PUBLISHED)
                | models.Q(frequency=frequency.WEEKLY, sent_7d=0)
                | models.Q(frequency=frequency.MONTHLY, sent_30d=0)
            )
        )


class Subscriber(models.Model):
    """One person for one brand, keyed by the normalised address."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending confirmation")
        CONFIRMED = "confirmed", _("Confirmed")
        UNSUBSCRIBED = "unsubscribed", _("Unsubscribed")
        BLOCKED = "blocked", _("Blocked")

    class Frequency(models.TextChoices):
        PUBLISHED = "published", _("As published")
        WEEKLY = "weekly", _("At most weekly")
        MONTHLY = "monthly", _("At most monthly")

    brand = models.ForeignKey(Brand, on_delete=models.CASCADE, related_name="subscribers")
    email = models.EmailField(_("email"), max_length=254)
    # sha256 of the normalised address: joins with Suppression without keeping the address there.
    email_hash = models.CharField(max_length=64, editable=False)
    name = models.CharField(_("name"), max_length=100, blank=True)
    language = models.CharField(_("language"), max_length=8, choices=settings.LANGUAGES, default="en")
    attributes = models.JSONField(_("attributes"), default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    frequency = models.CharField(_("how often"), max_length=10, choices=Frequency.choices, default=Frequency.PUBLISHED)
    source = models.CharField(max_length=16, blank=True)
    # Rotating this secret invalidates every link ever sent to the person.
    token_secret = models.CharField(max_length=64, default=new_token_secret, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    unsubscribed_at = models.DateTimeField(null=True, blank=True)
    blocked_at = models.DateTimeField(null=True, blank=True)
    paused_until = models.DateTimeField(null=True, blank=True)
    last_engaged_at = models.DateTimeField(null=True, blank=True)

    objects = SubscriberQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["brand", "email"], name="subscriber_unique_brand_email")]
        indexes = [
            models.Index(fields=["brand", "status"], name="subscriber_brand_status"),
            models.Index(fields=["status", "created_at"], name="subscriber_status_created"),
            # The dashboard's list: newest first, keyset-paginated by (created_at, id).
            models.Index(fields=["brand", "created_at", "id"], name="subscriber_brand_created"),
            # The suppression list and bounce processing find a person by the hash of their address.
            models.Index(fields=["brand", "email_hash"], name="subscriber_brand_email_hash"),
        ]

    def __str__(self) -> str:
        return self.email


class Subscription(models.Model):
    """A subscriber's membership of one audience."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending confirmation")
        ACTIVE = "active", _("Active")
        INACTIVE = "inactive", _("Inactive")

    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="subscriptions")
    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="subscriptions")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    source = models.CharField(max_length=16, blank=True)
    requested_at = models.DateTimeField(default=timezone.now)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subscriber", "audience"], name="subscription_unique_subscriber_audience")
        ]
        indexes = [
            models.Index(fields=["audience", "status"], name="subscription_audience_status"),
            models.Index(fields=["status", "requested_at"], name="subscription_status_requested"),
        ]

    def __str__(self) -> str:
        return f"{self.subscriber} → {self.audience} ({self.status})"


class SignupForm(models.Model):
    """A brand's signup form: hosted at /s/<brand>/<form>/ and embeddable."""

    brand = models.ForeignKey(Brand, on_delete=models.CASCADE, related_name="signup_forms")
    slug = models.SlugField(max_length=60)
    title = models.CharField(_("title"), max_length=120)
    intro = models.TextField(_("introduction"), blank=True)
    audiences = models.ManyToManyField(Audience, related_name="signup_forms")
    ask_name = models.BooleanField(_("ask for a name"), default=True)
    thank_you_url = models.URLField(
        _("thank-you URL"), blank=True, help_text=_("Where to send people after they sign up (optional).")
    )
    allowed_origins = models.TextField(
        _("allowed embedding origins"),
        blank=True,
        help_text=_("One origin per line, e.g. https://www.example.com, allowed to embed and post this form."),
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["brand", "slug"], name="signupform_unique_brand_slug")]

    def __str__(self) -> str:
        return f"{self.brand.slug}/{self.slug}"

    @property
    def origins(self) -> list[str]:
        """Origins allowed to embed and post this form: the brand's, then the form's own."""
        lines = [*self.brand.allowed_origins.splitlines(), *self.allowed_origins.splitlines()]
        return list(dict.fromkeys(line.strip().rstrip("/") for line in lines if line.strip()))

    def current_wording(self) -> ConsentWording:
        wording = self.wordings.order_by("-version").first()
        if wording is None:
            raise ConsentWording.DoesNotExist(f"signup form {self} has no consent wording")
        return wording


class ConsentWording(models.Model):
    """One version of a form's consent text. Never edited: a change is a new version."""

    form = models.ForeignKey(SignupForm, on_delete=models.CASCADE, related_name="wordings")
    version = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["form", "version"], name="consentwording_unique_form_version")]

    def __str__(self) -> str:
        return f"{self.form} v{self.version}"


class AppendOnlyQuerySet(models.QuerySet["ConsentEvent"]):
    def update(self, **kwargs: Any) -> int:
        raise TypeError("consent events are append-only")


class ConsentEvent(models.Model):
    """Append-only evidence of every consent change. Never updated."""

    class Kind(models.TextChoices):
        REQUESTED = "requested", _("Subscription requested")
        CONFIRMED = "confirmed", _("Subscription confirmed")
        UNSUBSCRIBED = "unsubscribed", _("Unsubscribed")
        RESUBSCRIBED = "resubscribed", _("Resubscribed")
        PREFERENCES = "preferences", _("Preferences changed")
        PAUSED = "paused", _("Paused")
        BLOCKED = "blocked", _("Blocked")
        # A bounce or complaint suppression ends only with the person's own new double opt-in.
        UNBLOCKED = "unblocked", _("Suppression lifted by a new opt-in")

    class Actor(models.TextChoices):
        CONSUMER = "consumer", _("Consumer")
        TEAM = "team", _("Team member")
        SYSTEM = "system", _("System")
        PROVIDER = "provider", _("Email provider")

    class Source(models.TextChoices):
        FORM = "form", _("Signup form")
        EMBED = "embed", _("Embedded form")
        API = "api", _("API")
        IMPORT = "import", _("Import")
        EMAIL_LINK = "email_link", _("Link in an email")
        ONE_CLICK = "one_click", _("One-click unsubscribe")
        PREFERENCE_CENTRE = "preferences", _("Preference centre")
        DASHBOARD = "dashboard", _("Dashboard")
        WEBHOOK = "webhook", _("Provider webhook")
        MAILBOX = "mailbox", _("Bounce mailbox")
        SYSTEM = "system", _("System")

    brand = models.ForeignKey(Brand, on_delete=models.CASCADE, related_name="consent_events")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="consent_events")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    actor = models.CharField(max_length=10, choices=Actor.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    source = models.CharField(max_length=12, choices=Source.choices)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    signup_form = models.ForeignKey(SignupForm, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    wording = models.ForeignKey(ConsentWording, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # A copy of the exact text shown, so the evidence survives any later edit.
    wording_text = models.TextField(blank=True)
    # [{"id": 1, "name": "Weekly news"}, ...] as named at the time.
    audiences = models.JSONField(default=list, blank=True)
    details = models.JSONField(default=dict, blank=True)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["subscriber", "created_at"], name="consentevent_subscriber"),
            models.Index(fields=["brand", "kind", "created_at"], name="consentevent_brand_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.subscriber_id} {self.created_at:%Y-%m-%d %H:%M}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise TypeError("consent events are append-only")
        super().save(*args, **kwargs)


class ConsumerEmail(models.Model):
    """An email a consumer asked for (a confirmation or a manage link): the task's unit of
    work, and the record behind the per-address limits."""

    class Kind(models.TextChoices):
        CONFIRM = "confirm", _("Confirmation request")
        MANAGE = "manage", _("Manage link")

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        SENDING = "sending", _("Sending")
        SENT = "sent", _("Sent")
        SKIPPED = "skipped", _("Skipped")
        FAILED = "failed", _("Failed")

    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="consumer_emails")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.CONFIRM)
    audience_ids = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    sent_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["subscriber", "kind", "created_at"], name="consumeremail_sub_kind_created")]

    def __str__(self) -> str:
        return f"{self.kind} email {self.pk} for {self.subscriber_id} ({self.status})"


class Suppression(models.Model):
    """An address this brand must never add or mail, remembered only by its hash."""

    class Reason(models.TextChoices):
        HARD_BOUNCE = "hard_bounce", _("Hard bounce")
        SOFT_BOUNCE = "soft_bounce", _("Repeated soft bounces")
        COMPLAINT = "complaint", _("Complaint")
        BLOCKED = "blocked", _("Blocked")
        ERASED = "erased", _("Erased at the person's request")
        TEAM = "team", _("Added by the team")

    brand = models.ForeignKey(Brand, on_delete=models.CASCADE, related_name="suppressions")
    email_hash = models.CharField(max_length=64)
    reason = models.CharField(max_length=12, choices=Reason.choices)
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["brand", "email_hash"], name="suppression_unique_brand_email_hash")
        ]
        # The dashboard's list: newest first, keyset-paginated by (created_at, id).
        indexes = [models.Index(fields=["brand", "created_at", "id"], name="suppression_brand_created")]

    def __str__(self) -> str:
        return f"{self.brand.slug}:{self.email_hash[:12]} ({self.reason})"


class Invitation(models.Model):
    """An owner's invitation for someone to join the brand's team with a role."""

    brand = models.ForeignKey(Brand, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField(_("email"))
    role = models.CharField(max_length=10, choices=Membership.Role.choices, default=Membership.Role.EDITOR)
    # Only a hash of the token is stored; the token itself travels in the email.
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.email} → {self.brand} ({self.role})"

    @property
    def is_open(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > timezone.now()


class AuditEvent(models.Model):
    """Who on the team did what, when: shown to owners."""

    brand = models.ForeignKey(Brand, on_delete=models.CASCADE, related_name="audit_events")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    # Kept even if the user is deleted later.
    user_email = models.CharField(max_length=254, blank=True)
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=255, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["brand", "-created_at"], name="auditevent_brand_created")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.user_email} {self.action} {self.target}"


def import_storage() -> Any:
    """Where uploaded CSV files live: ``IMPORT_DIR``, else ``VAR_DIR/imports``.

    A callable, so the migration does not freeze a path. Workers read the same
    files: on several hosts, point ``IMPORT_DIR`` at shared storage.
    """
    import os

    from django.core.files.storage import FileSystemStorage

    class ImportStorage(FileSystemStorage):
        # Read when used, not when models load, so a changed setting (tests, the bench) applies.
        @property
        def base_location(self) -> str:
            return str(getattr(settings, "IMPORT_DIR", settings.VAR_DIR / "imports"))

        @property
        def location(self) -> str:
            return os.path.abspath(self.base_location)

    return ImportStorage()


def import_upload_to(instance: ImportJob, filename: str) -> str:
    # Never a name the uploader chose: the original one is kept in ``file_name``.
    return f"{instance.brand_id}/{secrets.token_hex(16)}.csv"


class ImportJob(models.Model):
    """A CSV file imported into a brand's audiences: its mapping, consent basis and progress.

    Changes only through ``audiences/imports.py``; the task claims a queued job,
    processes it in chunks and advances ``processed_rows`` after each chunk.
    """

    class Status(models.TextChoices):
        UPLOADED = "uploaded", _("Uploaded")
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    class Basis(models.TextChoices):
        COLUMN = "column", _("A column with each person's double-opt-in confirmation time")
        ATTESTATION = "attestation", _("An attestation for the whole file")
        NONE = "none", _("No proof of opt-in: add everyone as pending")

    brand = models.ForeignKey(Brand, on_delete=models.CASCADE, related_name="import_jobs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    file = models.FileField(upload_to=import_upload_to, storage=import_storage, max_length=200)
    file_name = models.CharField(max_length=255)
    file_size = models.PositiveBigIntegerField(default=0)
    file_sha256 = models.CharField(max_length=64, blank=True)
    encoding = models.CharField(max_length=16, default="utf-8")
    delimiter = models.CharField(max_length=1, default=",")
    header = models.JSONField(default=list)
    total_rows = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.UPLOADED)
    # {"email": 0, "name": 1, "language": null, "confirmed_at": 3, "attributes": [4, 5]}: column indexes.
    mapping = models.JSONField(default=dict, blank=True)
    audiences = models.ManyToManyField(Audience, related_name="+", blank=True)
    basis = models.CharField(max_length=12, choices=Basis.choices, blank=True)
    consent_source = models.CharField(max_length=255, blank=True)
    attested_on = models.DateField(null=True, blank=True)
    attestation_wording = models.TextField(blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A run holds the job while its heartbeat is fresh; ``attempt`` fences off a run that lost it.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempt = models.PositiveIntegerField(default=0)
    processed_rows = models.PositiveIntegerField(default=0)
    counts = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    confirmations_requested_at = models.DateTimeField(null=True, blank=True)
    confirmations_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    confirmations_queued = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["brand", "status"], name="importjob_brand_status")]

    def __str__(self) -> str:
        return f"{self.file_name} → {self.brand} ({self.status})"


class ImportIssue(models.Model):
    """One row of an import that was not imported as given, and why: the job's report."""

    class Reason(models.TextChoices):
        INVALID_EMAIL = "invalid_email", _("Not a valid email address")
        DUPLICATE = "duplicate", _("Appears earlier in the file")
        UNKNOWN_LANGUAGE = "unknown_language", _("Unknown language")
        TOO_LONG = "too_long", _("A value is too long")
        FIELD_COUNT = "field_count", _("Wrong number of fields")
        SUPPRESSED = "suppressed", _("Suppressed address (bounce, complaint or the team's list)")
        BLOCKED = "blocked", _("Blocked: never to be contacted again")
        ERASED = "erased", _("Erased at the person's request")
        UNSUBSCRIBED = "unsubscribed", _("Unsubscribed: not added back")
        BAD_TIME = "bad_time", _("Confirmation time not understood: added as pending")

    job = models.ForeignKey(ImportJob, on_delete=models.CASCADE, related_name="issues")
    line = models.PositiveIntegerField()
    # As written in the file (the team's own data), so the report can name the row.
    email = models.CharField(max_length=254, blank=True)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    detail = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["job", "line", "id"]
        indexes = [models.Index(fields=["job", "line"], name="importissue_job_line")]

    def __str__(self) -> str:
        return f"{self.job_id}:{self.line} {self.reason}"
