"""Rendering brand-written campaigns: Jinja2's sandbox, compiled once per campaign.

Brand teams write the subject, preheader and bodies as Jinja2 templates. They
run in a ``SandboxedEnvironment`` over a plain dict context (never model
objects), so ``{{ ''.__class__ }}`` and attribute walks fail safely. Missing
fields render empty, and ``{{ subscriber.first_name | default("friend") }}``
gives a fallback.

Per campaign, ``compile_campaign`` builds the full HTML (brand body inside our
layout, with the footer that always carries the postal address, the
unsubscribe link and the preference-centre link), inlines its CSS once
(css-inline, with the Jinja tags protected), derives the text part when none
was written, and compiles everything. Per recipient only ``render`` runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import css_inline
from django.utils import translation
from django.utils.translation import gettext as _
from jinja2 import ChainableUndefined, Template, TemplateSyntaxError
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from campaigns.models import Campaign


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, but an attempt to reach an unsafe attribute is an error, not an empty string,
    so the editor can point at it."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is not allowed")

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``subscriber.name`` on the plain-dict context: the key first, without raising AttributeError.

        The context is dicts all the way down, so looking the key up first is both what a template
        author means (an attribute called ``items`` is the attribute, not ``dict.items``) and about
        twice as fast per lookup. Anything else goes through the sandbox's checks as before.
        """
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


_html_env = _Sandbox(autoescape=True, undefined=ChainableUndefined)
_text_env = _Sandbox(autoescape=False, undefined=ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
_inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)

_JINJA = re.compile(r"{{.*?}}|{%.*?%}|{#.*?#}", re.DOTALL)
_CRLF = re.compile(r"[\r\n]")

LAYOUT_HEAD = """<!doctype html>
<html lang="{{ subscriber.language }}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ subject }}</title></head>
<body style="margin:0;padding:0;background:#f4f5f7;">
<div style="display:none;max-height:0;overflow:hidden;mso-hide:all;">{{ preheader }}</div>
<div style="max-width:640px;margin:0 auto;padding:16px;background:#ffffff;color:#1b1f24;
font-family:Arial,Helvetica,sans-serif;font-size:16px;line-height:1.5;">
"""


def _footer_words(language: str) -> dict[str, str]:
    """The footer's fixed words, in the subscriber's language (Jinja-escaped: they are template source)."""
    with translation.override(language):
        words = {
            "why": _("You receive this email because you subscribed to %(audiences)s from %(brand)s.")
            % {"audiences": "{{ audiences }}", "brand": "{{ brand.name }}"},
            "unsubscribe": _("Unsubscribe"),
            "manage": _("Manage your preferences"),
        }
    return {k: v.replace("{%", "{ %").replace("{#", "{ #") for k, v in words.items()}


def layout_foot(language: str) -> str:
    w = _footer_words(language)
    return f"""
</div>
<div style="max-width:640px;margin:0 auto;padding:16px;color:#4a5360;font-family:Arial,Helvetica,sans-serif;
font-size:13px;line-height:1.5;">
<p>{w["why"]}</p>
<p><a href="{{{{ links.unsubscribe }}}}" style="color:#0b5cad;">{w["unsubscribe"]}</a> ·
<a href="{{{{ links.manage }}}}" style="color:#0b5cad;">{w["manage"]}</a></p>
<p>{{{{ brand.postal_address }}}}</p>
</div>
"""


def text_foot(language: str) -> str:
    w = _footer_words(language)
    return f"""

--
{w["why"]}
{w["unsubscribe"]}: {{{{ links.unsubscribe }}}}
{w["manage"]}: {{{{ links.manage }}}}
{{{{ brand.postal_address }}}}
"""


@dataclass(frozen=True)
class TemplateProblem:
    field: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.field}{where}: {self.message}"


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


class CompiledCampaign:
    """The campaign's templates, compiled once; ``render`` is the only per-recipient work."""

    def __init__(self, campaign: Campaign) -> None:
        self.html_body = inline_css(LAYOUT_HEAD + campaign.html_body + "\n<!--assent-footer-->")
        self.text_body = campaign.text_body or html_to_text(campaign.html_body)
        self.subject = _text_env.from_string(campaign.subject)
        self.preheader = _text_env.from_string(campaign.preheader)
        # A subject or preheader without template syntax is the same for everyone: render it once.
        self._static_subject = None if _has_syntax(campaign.subject) else self._subject({})
        self._static_preheader = None if _has_syntax(campaign.preheader) else self.preheader.render({})
        self._by_language: dict[str, tuple[Template, Template]] = {}

    def _templates(self, language: str) -> tuple[Template, Template]:
        """The HTML and text templates with the footer in ``language``, compiled on first use."""
        if language not in self._by_language:
            html = self.html_body.replace("<!--assent-footer-->", layout_foot(language))
            if "<!--assent-footer-->" not in self.html_body:  # the inliner dropped the marker
                html = self.html_body + layout_foot(language)
            if "</html>" not in html[-40:]:
                html += "</body></html>"
            self._by_language[language] = (
                _html_env.from_string(html),
                _text_env.from_string(self.text_body + text_foot(language)),
            )
        return self._by_language[language]

    def _subject(self, context: dict[str, Any]) -> str:
        # Header values never carry CR/LF, whatever a template produced.
        return " ".join(_CRLF.sub(" ", self.subject.render(context)).split())

    def render(self, context: dict[str, Any]) -> Rendered:
        html, text = self._templates(context["subscriber"]["language"])
        subject = self._static_subject if self._static_subject is not None else self._subject(context)
        preheader = self._static_preheader
        if preheader is None:
            preheader = self.preheader.render(context)
        full = {**context, "subject": subject, "preheader": preheader}
        return Rendered(subject=subject, html=html.render(full), text=text.render(full))


def _has_syntax(source: str) -> bool:
    return any(marker in source for marker in ("{{", "{%", "{#"))


def compile_campaign(campaign: Campaign) -> CompiledCampaign:
    return CompiledCampaign(campaign)


def sample_context(campaign: Campaign) -> dict[str, Any]:
    brand = campaign.brand
    return build_context(
        brand=brand,
        subscriber={"email": "sam@example.com", "name": "Sam Sample", "language": brand.default_language},
        attributes={},
        audiences=[a.name for a in campaign.audiences.all()] if campaign.pk else [],
        links={"unsubscribe": "https://example.invalid/u/sample/", "manage": "https://example.invalid/p/sample/"},
    )


def build_context(
    *,
    brand: Any,
    subscriber: dict[str, Any],
    attributes: dict[str, Any],
    audiences: list[str],
    links: dict[str, str],
) -> dict[str, Any]:
    """The plain-dict context every template sees (no model objects)."""
    name = subscriber.get("name") or ""
    return {
        "subscriber": {
            "email": subscriber.get("email", ""),
            "name": name,
            "first_name": name.split(" ")[0] if name else "",
            "language": subscriber.get("language", "en"),
            "attributes": dict(attributes or {}),
        },
        "brand": {
            "name": brand.name,
            "postal_address": brand.postal_address,
            "privacy_url": brand.privacy_url,
            "from_name": brand.from_name,
        },
        "audiences": ", ".join(audiences),
        "links": links,
    }


def check(campaign: Campaign) -> list[TemplateProblem]:
    """Every template problem, with its field and line, found before any send."""
    problems: list[TemplateProblem] = []
    fields = {
        "subject": campaign.subject,
        "preheader": campaign.preheader,
        "html_body": campaign.html_body,
        "text_body": campaign.text_body,
    }
    for field, source in fields.items():
        env = _html_env if field == "html_body" else _text_env
        try:
            env.from_string(source).render(sample_context(campaign))
        except TemplateSyntaxError as exc:
            problems.append(TemplateProblem(field, exc.lineno, exc.message or str(exc)))
        except SecurityError as exc:
            problems.append(TemplateProblem(field, _line_of(exc), f"not allowed: {exc}"))
        except TemplateError as exc:
            problems.append(TemplateProblem(field, _line_of(exc), str(exc)))
        except Exception as exc:  # a template must never take the editor down
            problems.append(TemplateProblem(field, _line_of(exc), f"{type(exc).__name__}: {exc}"))
    if not problems:
        try:
            rendered = compile_campaign(campaign).render(sample_context(campaign))
        except Exception as exc:
            problems.append(TemplateProblem("html_body", None, f"{type(exc).__name__}: {exc}"))
        else:
            if not has_visible_link(rendered.html, "https://example.invalid/u/sample/"):
                problems.append(TemplateProblem("html_body", None, "the unsubscribe link is missing"))
    return problems


def _line_of(exc: BaseException) -> int | None:
    """The template line of a runtime error, from the traceback Jinja rewrites."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def inline_css(source: str) -> str:
    """Inline CSS into a Jinja HTML template, once, without disturbing its tags.

    Each Jinja tag is swapped for an inert token (a comment between elements, a
    plain word inside text or attributes), the HTML is inlined, and the tags
    are put back. If any token did not survive, the template is used as it is.
    """
    if "<style" not in source.lower():
        return source
    tags: list[str] = []

    def protect(match: re.Match[str]) -> str:
        tags.append(match.group(0))
        return f"JINJATAG{len(tags) - 1}X"

    protected = _JINJA.sub(protect, source)
    inlined = _inliner.inline(protected)
    if any(f"JINJATAG{i}X" not in inlined for i in range(len(tags))):
        return source
    return re.sub(r"JINJATAG(\d+)X", lambda m: tags[int(m.group(1))], inlined)


class _VisibleLinks(HTMLParser):
    """The hrefs of links a reader can see: not inside a raw-text element or an element hidden
    by ``hidden`` or an inline ``display:none``/``visibility:hidden`` that is still open."""

    _VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
    _RAW = {"script", "style", "template", "textarea", "title", "noscript", "iframe", "xmp", "noembed", "noframes"}
    _HIDING = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[tuple[str, bool]] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        hides = tag in self._RAW or "hidden" in values or bool(self._HIDING.search(values.get("style") or ""))
        if tag == "a" and not hides and not any(h for _, h in self.open):
            self.hrefs.append(values.get("href") or "")
        if tag not in self._VOID:
            self.open.append((tag, hides))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.handle_starttag(tag, attrs)
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        # Close up to the nearest open element of that name; a stray end tag changes nothing.
        for i in range(len(self.open) - 1, -1, -1):
            if self.open[i][0] == tag:
                del self.open[i:]
                return


def has_visible_link(html: str, url: str) -> bool:
    """Whether ``html`` has a link to ``url`` a reader can see.

    Stricter than a browser where unsure (an unclosed hidden element hides what
    follows): a template that hides the footer, e.g. inside an unclosed
    comment or ``<div style="display:none">``, must not pass as having one.
    """
    # Python's parser resumes after an unterminated comment; browsers hide everything after it.
    visible = re.sub(r"<!--.*?(?:-->|\Z)", "", html, flags=re.DOTALL)
    finder = _VisibleLinks()
    finder.feed(visible)
    finder.close()
    return url in finder.hrefs


class _TextExtractor(HTMLParser):
    _BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "ul", "ol", "section", "blockquote"}
    _SKIP = {"style", "script", "head", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.href: list[str | None] = []
        self.link_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n\n")
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag == "a":
            self.href.append(dict(attrs).get("href"))
            self.link_text.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip = max(self.skip - 1, 0)
        elif tag in self._BLOCK:
            self.parts.append("\n\n")
        elif tag == "a" and self.href:
            href, text = self.href.pop(), self.link_text.pop().strip()
            if href and href != text:
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.link_text:
            self.link_text[-1] += data
        self.parts.append(data)


def html_to_text(html: str) -> str:
    """A readable text part from HTML (Jinja tags pass through untouched)."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    text = "".join(extractor.parts)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
