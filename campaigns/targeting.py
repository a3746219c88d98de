"""Segment rules: narrow a campaign's audiences by attributes, language, signup date and engagement.

A segment is a list of rules that must all match, each
``{"field": ..., "op": ..., "value": ...}``, built in the UI without code:

- ``attributes.<key>``: equals, not_equals, contains, in (comma-separated), is_set
- ``language``: equals, not_equals, in
- ``signed_up`` (created_at) and ``last_engaged`` (last_engaged_at): before, after (YYYY-MM-DD), is_set
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from django.db.models import Q, QuerySet
from django.db.models.fields.json import KT
from django.utils.translation import gettext_lazy as _

KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
DATE_FIELDS = {"signed_up": "created_at", "last_engaged": "last_engaged_at"}
OPS: dict[str, Any] = {
    "equals": _("equals"),
    "not_equals": _("does not equal"),
    "contains": _("contains"),
    "in": _("is one of"),
    "is_set": _("is set"),
    "before": _("is before"),
    "after": _("is after"),
}


class RuleError(ValueError):
    """A rule that can't be applied, with a message for the editor."""


def validate(rules: Any) -> list[dict[str, str]]:
    """Check and normalise a segment; raises RuleError naming the bad rule."""
    if not isinstance(rules, list):
        raise RuleError("a segment is a list of rules")
    clean = []
    for n, rule in enumerate(rules, start=1):
        if not isinstance(rule, dict):
            raise RuleError(f"rule {n} is not a rule")
        field, op, value = str(rule.get("field", "")), str(rule.get("op", "")), str(rule.get("value", "")).strip()
        if op not in OPS:
            raise RuleError(f"rule {n}: unknown comparison {op!r}")
        if field.startswith("attributes."):
            if not KEY.match(field.removeprefix("attributes.")) or op in {"before", "after"}:
                raise RuleError(f"rule {n}: use an attribute name of letters, digits, - and _, and a text comparison")
        elif field == "language":
            if op not in {"equals", "not_equals", "in"}:
                raise RuleError(f"rule {n}: language can be compared with equals, does not equal or is one of")
        elif field in DATE_FIELDS:
            if op not in {"before", "after", "is_set"}:
                raise RuleError(f"rule {n}: dates can be before, after or set")
            if op != "is_set":
                try:
                    date.fromisoformat(value)
                except ValueError as exc:
                    raise RuleError(f"rule {n}: {value!r} is not a date like 2026-01-31") from exc
        else:
            raise RuleError(f"rule {n}: unknown field {field!r}")
        if op not in {"is_set"} and not value:
            raise RuleError(f"rule {n}: a value is needed")
        clean.append({"field": field, "op": op, "value": value})
    return clean


def _condition(rule: dict[str, str]) -> Q:
    field, op, value = rule["field"], rule["op"], rule["value"]
    if field in DATE_FIELDS:
        column = DATE_FIELDS[field]
        if op == "is_set":
            return Q(**{f"{column}__isnull": False})
        return Q(**{f"{column}__date__{'lt' if op == 'before' else 'gt'}": date.fromisoformat(value)})
    column = "language" if field == "language" else f"seg_{field.removeprefix('attributes.')}"
    values = [v.strip() for v in value.split(",") if v.strip()]
    return {
        "equals": lambda: Q(**{f"{column}__iexact": value}),
        "not_equals": lambda: ~Q(**{f"{column}__iexact": value}) | Q(**{f"{column}__isnull": True}),
        "contains": lambda: Q(**{f"{column}__icontains": value}),
        "in": lambda: Q(**{f"{column}__in": values}),
        "is_set": lambda: Q(**{f"{column}__isnull": False}) & ~Q(**{column: ""}),
    }[op]()


def apply(queryset: QuerySet[Any], rules: Any) -> QuerySet[Any]:
    """The queryset narrowed by every rule (all must match)."""
    rules = validate(rules or [])
    keys = {r["field"].removeprefix("attributes.") for r in rules if r["field"].startswith("attributes.")}
    if keys:
        queryset = queryset.alias(**{f"seg_{key}": KT(f"attributes__{key}") for key in keys})
    for rule in rules:
        queryset = queryset.filter(_condition(rule))
    return queryset
