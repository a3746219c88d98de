"""Operator's admin. Consent state is read-only here: it changes only through operations."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from audiences import embed
from audiences.models import (
    Audience,
    Brand,
    ConsentEvent,
    ConsentWording,
    ConsumerEmail,
    Membership,
    SignupForm,
    Subscriber,
    Subscription,
    Suppression,
)
from audiences.signup_forms import set_wording


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AudienceInline(admin.TabularInline):
    model = Audience
    extra = 0
    fields = ["name", "description", "archived_at"]


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Brand)
class BrandAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "from_email", "default_language", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [AudienceInline, MembershipInline]


@admin.register(Audience)
class AudienceAdmin(admin.ModelAdmin):
    list_display = ["name", "brand", "archived_at"]
    list_filter = ["brand"]
    search_fields = ["name"]


class SignupFormAdminForm(forms.ModelForm):
    wording_text = forms.CharField(
        label="Consent wording",
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Editing this creates a new version; earlier consent events keep the text they were shown.",
    )

    class Meta:
        model = SignupForm
        fields = [
            "brand",
            "slug",
            "title",
            "intro",
            "audiences",
            "ask_name",
            "thank_you_url",
            "allowed_origins",
            "is_active",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        current = self.instance.wordings.order_by("-version").first() if self.instance.pk else None
        if current is not None:
            self.fields["wording_text"].initial = current.text


class ConsentWordingInline(admin.TabularInline):
    model = ConsentWording
    extra = 0
    fields = readonly_fields = ("version", "text", "created_at")
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SignupForm)
class SignupFormAdmin(admin.ModelAdmin):
    form = SignupFormAdminForm
    list_display = ["title", "brand", "slug", "is_active", "hosted_link"]
    list_filter = ["brand", "is_active"]
    filter_horizontal = ["audiences"]
    readonly_fields = ["hosted_link", "embed_code", "iframe_code"]
    inlines = [ConsentWordingInline]

    @admin.display(description="Hosted page")
    def hosted_link(self, obj: SignupForm) -> str:
        if not obj.pk:
            return "-"
        return format_html('<a href="/s/{}/{}/">/s/{}/{}/</a>', obj.brand.slug, obj.slug, obj.brand.slug, obj.slug)

    @admin.display(description="Embed snippet (HTML)")
    def embed_code(self, obj: SignupForm) -> str:
        if not obj.pk or not obj.wordings.exists():
            return "Save the form first."
        return format_html('<textarea readonly rows="14" cols="90">{}</textarea>', embed.embed_snippet(obj))

    @admin.display(description="Embed as an iframe")
    def iframe_code(self, obj: SignupForm) -> str:
        if not obj.pk:
            return "Save the form first."
        return format_html('<textarea readonly rows="3" cols="90">{}</textarea>', embed.iframe_snippet(obj))

    def save_model(self, request: HttpRequest, obj: SignupForm, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        set_wording(form=obj, text=form.cleaned_data["wording_text"], user=request.user)  # type: ignore[arg-type]


class SubscriptionInline(admin.TabularInline):
    model = Subscription
    extra = 0
    fields = readonly_fields = ("audience", "status", "source", "requested_at", "confirmed_at", "ended_at")
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Subscriber)
class SubscriberAdmin(admin.ModelAdmin):
    list_display = ["email", "brand", "status", "created_at", "confirmed_at"]
    list_filter = ["brand", "status"]
    search_fields = ["email", "name"]
    show_full_result_count = False
    readonly_fields = (
        "brand",
        "email",
        "status",
        "source",
        "created_at",
        "confirmed_at",
        "unsubscribed_at",
        "blocked_at",
        "paused_until",
        "last_engaged_at",
    )
    fields = ("name", "language", "attributes", *readonly_fields)
    inlines = [SubscriptionInline]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ConsentEvent)
class ConsentEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "brand", "subscriber", "kind", "actor", "source", "ip"]
    list_filter = ["brand", "kind", "actor", "source"]
    search_fields = ["subscriber__email"]
    show_full_result_count = False


@admin.register(ConsumerEmail)
class ConsumerEmailAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "subscriber", "status", "sent_at", "error"]
    list_filter = ["status"]


@admin.register(Suppression)
class SuppressionAdmin(ReadOnlyAdmin):
    list_display = ["brand", "email_hash", "reason", "created_at"]
    list_filter = ["brand", "reason"]
    search_fields = ["email_hash"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "brand", "role", "created_at"]
    list_filter = ["brand", "role"]
    autocomplete_fields = ["user"]
