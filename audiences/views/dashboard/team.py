"""Owners' pages: team members and invitations, brand settings, the audit log; and the
public invitation page where an invitee joins."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from audiences import team
from audiences.access import Role, brand_view, current_user, get_for_brand
from audiences.accounts import INVITATION_SESSION_KEY
from audiences.models import AuditEvent, Brand, Invitation, Membership
from audiences.signup_forms import parse_origins


class InviteForm(forms.Form):
    email = forms.EmailField(label=gettext_lazy("Email address"))
    role = forms.ChoiceField(label=gettext_lazy("Role"), choices=Membership.Role.choices, initial=Role.EDITOR)


class RoleForm(forms.Form):
    role = forms.ChoiceField(label=gettext_lazy("Role"), choices=Membership.Role.choices)


class BrandSettingsForm(forms.ModelForm):
    class Meta:
        model = Brand
        fields = team.BRAND_SETTINGS
        widgets = {
            "postal_address": forms.Textarea(attrs={"rows": 3}),
            "allowed_origins": forms.Textarea(attrs={"rows": 3}),
        }

    def clean_allowed_origins(self) -> str:
        return "\n".join(parse_origins(self.cleaned_data["allowed_origins"]))


@brand_view(Role.OWNER)
@require_http_methods(["GET", "POST"])
def members(request: HttpRequest) -> HttpResponse:
    brand = request.brand  # type: ignore[attr-defined]
    form = InviteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            team.invite(
                brand=brand,
                user=current_user(request),
                email=form.cleaned_data["email"],
                role=form.cleaned_data["role"],
            )
        except team.TeamError as error:
            form.add_error("email", str(error))
        else:
            messages.success(request, _("Invitation sent to %(email)s.") % {"email": form.cleaned_data["email"]})
            return redirect("dash:team", brand_slug=brand.slug)
    context = {
        "members": Membership.objects.filter(brand=brand).select_related("user").order_by("user__email"),
        "invitations": [i for i in Invitation.objects.filter(brand=brand)[:50] if i.is_open],
        "form": form,
        "roles": Membership.Role.choices,
    }
    return render(request, "dashboard/team.html", context, status=400 if form.errors else 200)


@brand_view(Role.OWNER)
@require_POST
def member_role(request: HttpRequest, pk: int) -> HttpResponse:
    membership = get_for_brand(Membership, request, pk=pk)
    form = RoleForm(request.POST)
    if form.is_valid():
        try:
            team.change_role(membership=membership, user=current_user(request), role=form.cleaned_data["role"])
            messages.success(request, _("Role changed."))
        except team.TeamError as error:
            messages.error(request, str(error))
    return redirect("dash:team", brand_slug=membership.brand.slug)


@brand_view(Role.OWNER)
@require_POST
def member_remove(request: HttpRequest, pk: int) -> HttpResponse:
    membership = get_for_brand(Membership, request, pk=pk)
    try:
        team.remove_member(membership=membership, user=current_user(request))
        messages.success(request, _("Member removed."))
    except team.TeamError as error:
        messages.error(request, str(error))
    return redirect("dash:team", brand_slug=membership.brand.slug)


@brand_view(Role.OWNER)
@require_POST
def invitation_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    invitation = get_for_brand(Invitation, request, pk=pk)
    team.revoke(invitation=invitation, user=current_user(request))
    messages.success(request, _("Invitation revoked."))
    return redirect("dash:team", brand_slug=invitation.brand.slug)


@brand_view(Role.OWNER)
@require_http_methods(["GET", "POST"])
def settings_page(request: HttpRequest) -> HttpResponse:
    brand = request.brand  # type: ignore[attr-defined]
    form = BrandSettingsForm(request.POST or None, instance=Brand.objects.get(pk=brand.pk))
    if request.method == "POST" and form.is_valid():
        team.update_settings(brand=brand, user=current_user(request), changes=form.cleaned_data)
        messages.success(request, _("Settings saved."))
        return redirect("dash:settings", brand_slug=brand.slug)
    return render(request, "dashboard/settings.html", {"form": form}, status=400 if form.errors else 200)


@brand_view(Role.OWNER)
def audit_log(request: HttpRequest) -> HttpResponse:
    events = AuditEvent.objects.filter(brand=request.brand)  # type: ignore[attr-defined]
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    return render(request, "dashboard/audit.html", {"page": page})


@require_http_methods(["GET", "POST"])
def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """The link in an invitation email: sign in or create an account, then join."""
    found = team.find_invitation(token)
    if found is None or not found.is_open:
        return render(request, "dashboard/invitation.html", {"invitation": found, "closed": True}, status=410)
    request.session[INVITATION_SESSION_KEY] = token
    if request.method == "POST" and request.user.is_authenticated:
        try:
            team.accept(invitation=found, user=current_user(request))
        except team.TeamError as error:
            messages.error(request, str(error))
            return redirect("invitation", token=token)
        request.session.pop(INVITATION_SESSION_KEY, None)
        messages.success(request, _("Welcome to %(brand)s.") % {"brand": found.brand.name})
        return redirect("dash:home", brand_slug=found.brand.slug)
    context: dict[str, Any] = {
        "invitation": found,
        "login_url": f"{reverse('account_login')}?next={request.path}",
        "signup_url": f"{reverse('account_signup')}?next={request.path}",
    }
    return render(request, "dashboard/invitation.html", context)


urlpatterns = [
    path("team/", members, name="team"),
    path("team/<int:pk>/role/", member_role, name="member_role"),
    path("team/<int:pk>/remove/", member_remove, name="member_remove"),
    path("team/invitations/<int:pk>/revoke/", invitation_revoke, name="invitation_revoke"),
    path("settings/", settings_page, name="settings"),
    path("audit/", audit_log, name="audit"),
]
