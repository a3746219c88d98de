"""Every dashboard URL, under /b/<brand_slug>/ (namespace ``dash``). Each area module owns its patterns."""

from __future__ import annotations

from audiences.views.dashboard import home, imports, lists, subscribers, suppressions, team
from campaigns import deliverability_views
from campaigns import urls as campaign_urls

app_name = "dash"

urlpatterns = [
    *home.urlpatterns,
    *team.urlpatterns,
    *lists.urlpatterns,
    *subscribers.urlpatterns,
    *suppressions.urlpatterns,
    *imports.urlpatterns,
    *campaign_urls.urlpatterns,
    *deliverability_views.urlpatterns,
]
