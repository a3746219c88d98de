"""Dashboard access: the one permission helper.

Every dashboard URL starts with ``/b/<brand_slug>/``. ``brand_view`` resolves
the brand from the URL, requires a signed-in member of it (anyone else gets a
404, the same as a brand that does not exist), and checks the member's role:
viewers read, editors also change audiences, forms, subscribers and campaigns,
owners also manage members and settings. A member whose role is too low for an
action gets a 403. ``get_for_brand`` fetches an object of the current brand or
404s, so another brand's object looks exactly like a missing one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404

from audiences.models import Brand, Membership

Role = Membership.Role
RANK = {Role.VIEWER: 1, Role.EDITOR: 2, Role.OWNER: 3}

M = TypeVar("M", bound=Model)
View = Callable[..., HttpResponse]


class BrandRequest(HttpRequest):
    """An HttpRequest that passed ``brand_view``: it carries the brand and membership."""

    brand: Brand
    membership: Membership


def current_user(request: HttpRequest) -> User:
    """The signed-in user (views behind ``brand_view`` or ``login_required`` only)."""
    assert isinstance(request.user, User), "needs a signed-in user"
    return request.user


def can(membership: Membership | None, role: str) -> bool:
    return membership is not None and RANK[Role(membership.role)] >= RANK[Role(role)]


def brand_view(role: str = Role.VIEWER, *, write: bool = False) -> Callable[[View], View]:
    """Decorate a dashboard view taking ``brand_slug``.

    ``role`` is the lowest role allowed for every method; with ``write=True``
    safe methods (GET, HEAD) stay open to viewers and only POST needs ``role``.
    """

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, brand_slug: str, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            membership = (
                Membership.objects.select_related("brand").filter(user=request.user, brand__slug=brand_slug).first()
            )
            if membership is None:
                raise Http404("no such brand")
            needed = Role.VIEWER if write and request.method in {"GET", "HEAD"} else role
            if not can(membership, needed):
                raise PermissionDenied("your role does not allow this")
            request.brand = membership.brand  # type: ignore[attr-defined]
            request.membership = membership  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def get_for_brand(source: type[M] | QuerySet[M], request: HttpRequest, **lookup: Any) -> M:
    """The object of the request's brand matching ``lookup``, or 404."""
    queryset = source._default_manager.all() if isinstance(source, type) else source
    return get_object_or_404(queryset.filter(brand=request.brand), **lookup)  # type: ignore[attr-defined]
