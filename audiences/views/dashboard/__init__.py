"""Brand team dashboard views, one module per area; every view goes through ``access.brand_view``."""

from __future__ import annotations

from collections.abc import Iterable

from django.http import StreamingHttpResponse
from django.utils import timezone


def csv_download(lines: Iterable[str], *, slug: str, what: str) -> StreamingHttpResponse:
    """A streamed CSV attachment named ``<brand>-<what>-<YYYYmmdd-HHMM>.csv``, never cached."""
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="{slug}-{what}-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    return response
