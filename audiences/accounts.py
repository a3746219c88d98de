"""django-allauth adapter: closed registration unless OPEN_SIGNUP, or an invitation."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.http import HttpRequest

INVITATION_SESSION_KEY = "assent_invitation"


class AccountAdapter(DefaultAccountAdapter):
    def send_mail(self, template_prefix: str, email: str, context: dict[str, Any]) -> None:
        """allauth's emails (verification, password reset) go out from a worker, not the request."""
        from audiences.emails import send_later

        message = self.render_mail(template_prefix, email, context)
        if not isinstance(message, EmailMultiAlternatives):
            upgraded = EmailMultiAlternatives(
                subject=message.subject,
                body=message.body,
                from_email=message.from_email,
                to=message.to,
                headers=message.extra_headers,
            )
            if message.content_subtype == "html":
                upgraded.body = ""
                upgraded.attach_alternative(message.body, "text/html")
            message = upgraded
        send_later(message)

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        """Anyone may sign up only with OPEN_SIGNUP; otherwise only someone holding an open invitation."""
        if settings.OPEN_SIGNUP:
            return True
        from audiences import team

        return team.open_invitation_from_session(request) is not None
