"""Every dashboard URL, under /b/<brand_slug>/ (namespace ``dash``). Each area module owns its patterns."""

from __future__ import annotations

from audiences.views.dashboard import home, team

app_name = "dash"

urlpatterns = [
    *home.urlpatterns,
    *team.urlpatterns,
]
