"""campaigns/mime.py: the fast campaign serialisation is correct on the wire and says what Django would say.

``CampaignMessages.build`` writes each message's bytes itself; ``django_message``
builds the same message as an ``EmailMultiAlternatives`` for every other backend.
Both are parsed here with the ``email`` package's modern policy and compared as a
mail client would see them; the fast bytes are checked against RFC 5322 (CRLF line
ends, 998 octets per line, no header injection) and RFC 2047, and sent to the
aiosmtpd server with ``smtplib`` and through ``delivery.send_batch``.

Two renderings of one delivery differ only in what is random by design (the
Message-ID's random part, the multipart boundary) and in the signed link tokens,
whose signature carries the second they were made; ``_same_links`` masks those.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import smtplib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.mail import get_connection
from django.core.mail.message import sanitize_address
from django.utils.encoding import punycode

from audiences import consent, links
from audiences.models import Audience, Brand, SignupForm, Subscriber
from campaigns import delivery, mime, rendering, verp
from campaigns.models import Campaign, Delivery
from tests.campaigns.test_delivery import EVIDENCE, HTML
from tests.mailserver import DROP, MailServer

# Every header a campaign message carries, each exactly once; anything else is an injected header.
HEADER_NAMES = {
    "content-type",
    "mime-version",
    "from",
    "reply-to",
    "date",
    "subject",
    "to",
    "message-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-id",
    "x-assent-delivery",
}
COMPARED = (
    "From",
    "To",
    "Reply-To",
    "Subject",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "X-Assent-Delivery",
    "MIME-Version",
)
SENDER = "news@acme.example"
BOUNCES = "bounces@mail.acme.example"

_LINK_TOKEN = re.compile(r"/([cup])/\d+\.[\w:.-]+/")
_ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")

DOTS = "Hello {{ subscriber.first_name }},\n.\n.hidden line\n..two dots\n. a dot and a space\nend."


@dataclass(frozen=True)
class Case:
    """One campaign and one recipient, as a brand team and a subscriber could write them."""

    subject: str = "Hi {{ subscriber.first_name }}, our autumn teas are in"
    html: str = HTML
    text: str = ""
    from_name: str = ""
    reply_to: str = ""
    name: str = "Pat Doe"
    email: str = "pat@example.com"
    attributes: dict[str, str] | None = None


LONG_HTML = "<p>" + "Our first flush Darjeeling is in, and so are the biscuits. " * 30 + "</p>"
LONG_GERMAN_HTML = "<p>" + "Grüße aus München: der erste Darjeeling ist da. " * 30 + "</p>"

CASES = {
    "plain": Case(),
    "umlauts-and-emoji": Case(
        subject="Grüße aus München, {{ subscriber.first_name }} 🍵 \u2013 neue Herbsttees",
        from_name="Teehaus Müller & Söhne",
        name="Jürgen Müller",
        email="juergen@example.de",
    ),
    "commas-and-quotes": Case(from_name='Acme, Tea "Ltd"', name='Doe, Pat "PJ" (home)'),
    "non-ascii-with-comma": Case(from_name="Grün, Tee & Co.", name="Müller, Jürgen", email="mueller@example.de"),
    "long-ascii-subject": Case(
        subject="{{ subscriber.attributes.headline }}",
        attributes={"headline": " ".join(f"word{i}" for i in range(300))},
    ),
    "long-unicode-subject": Case(
        subject="{{ subscriber.attributes.headline }}", attributes={"headline": "Grüße 🍵 aus München " * 60}
    ),
    "long-unbroken-subject": Case(subject="{{ subscriber.attributes.headline }}", attributes={"headline": "x" * 1500}),
    "long-html-line": Case(html=LONG_HTML),
    "long-german-html-line": Case(html=LONG_GERMAN_HTML),
    "dots": Case(text=DOTS, html="<p>Hello</p>\n.<p>a line that starts with a dot</p>\n..<br>\n."),
    "reply-to": Case(reply_to="Support@Acme.example"),
}


def _person(form: SignupForm, audience: Audience, case: Case) -> Subscriber:
    consent.request_subscription(form=form, email=case.email, audiences=[audience], evidence=EVIDENCE, name=case.name)
    subscriber = Subscriber.objects.get(brand=form.brand, email=consent.normalise_email(case.email))
    consent.confirm(subscriber=subscriber, audience_ids=[audience.pk], evidence=EVIDENCE)
    if case.attributes:
        Subscriber.objects.filter(pk=subscriber.pk).update(attributes=case.attributes)
    subscriber.refresh_from_db()
    return subscriber


Make = Callable[..., tuple[mime.CampaignMessages, Delivery]]


@pytest.fixture
def make(brand: Brand, news: Audience, signup_form: SignupForm, owner: User) -> Make:
    """``make(case)``: the campaign's message builder and the planned delivery to the case's person."""

    def make(case: Case = Case()) -> tuple[mime.CampaignMessages, Delivery]:
        campaign = Campaign.objects.create(
            brand=brand,
            name="Autumn teas",
            subject=case.subject,
            preheader="Fresh from the garden",
            html_body=case.html,
            text_body=case.text,
            from_name=case.from_name,
            reply_to=case.reply_to,
            created_by=owner,
        )
        campaign.audiences.set([news])
        subscriber = _person(signup_form, news, case)
        delivery.plan(campaign)
        d = Delivery.objects.select_related("subscriber").get(campaign=campaign, subscriber=subscriber)
        return _messages(campaign), d

    return make


def _messages(campaign: Campaign) -> mime.CampaignMessages:
    audiences = list(campaign.audiences.order_by("pk"))
    return mime.CampaignMessages(campaign, rendering.compile_campaign(campaign), audiences)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def fast(messages: mime.CampaignMessages, d: Delivery) -> tuple[mime.Built, EmailMessage]:
    built = messages.build(d)
    assert built is not None
    return built, parse(built.data)


def django(messages: mime.CampaignMessages, d: Delivery) -> EmailMessage:
    """Django's serialisation of the same delivery, as its SMTP backend writes it."""
    message, message_id = messages.django_message(d)
    # Django's SafeMIMEMultipart.as_bytes takes linesep; its SMTP backend passes CRLF too.
    parsed = parse(message.message().as_bytes(linesep="\r\n"))  # type: ignore[call-arg]
    assert parsed["Message-ID"] == message_id
    return parsed


def _same_links(text: str) -> str:
    return _LINK_TOKEN.sub(r"/\1/TOKEN/", text)


def bodies(message: EmailMessage) -> tuple[str, str]:
    """The decoded text and HTML parts, in the order they come."""
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    text, html = (p.get_content() for p in parts)
    return text, html


def assert_wire_format(data: bytes) -> None:
    """RFC 5322 2.1.1 and 2.3: CRLF line ends only, at most 998 octets per line; US-ASCII headers."""
    assert data.endswith(b"\r\n")
    lines = data.split(b"\r\n")[:-1]
    assert not [line for line in lines if b"\r" in line or b"\n" in line], "a bare CR or LF"
    too_long = [len(line) for line in lines if len(line) > 998]
    assert not too_long, f"lines of {too_long} octets"
    head = data.partition(b"\r\n\r\n")[0]
    assert head.isascii()


def assert_header_names(message: EmailMessage) -> None:
    """The expected headers, each exactly once: nothing a name or subject carried became a header."""
    names = [name.lower() for name in message]
    assert sorted(names) == sorted(HEADER_NAMES)


def _addresses(message: EmailMessage, name: str) -> list[tuple[str, str]]:
    return [(a.display_name, a.addr_spec) for a in message[name].addresses]


# --- The same message as Django's ----------------------------------------------------------------


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_fast_message_says_what_djangos_says(make: Make, case: Case) -> None:
    messages, d = make(case)
    built, ours = fast(messages, d)
    theirs = django(messages, d)
    assert_header_names(ours)
    assert_header_names(theirs)
    for name in COMPARED:  # Django may fold right after the colon: strip the space that leaves
        assert _same_links(str(ours[name])) == _same_links(str(theirs[name]).strip()), name
    for name in ("From", "To", "Reply-To"):
        assert _addresses(ours, name) == _addresses(theirs, name), name
    assert re.fullmatch(rf"<d{d.pk}\.[0-9a-f]{{12}}@acme\.example>", ours["Message-ID"])
    assert re.fullmatch(rf"<d{d.pk}\.[0-9a-f]{{12}}@acme\.example>", theirs["Message-ID"])
    assert built.message_id == ours["Message-ID"]
    assert [_same_links(b) for b in bodies(ours)] == [_same_links(b) for b in bodies(theirs)]
    assert [p["Content-Transfer-Encoding"] for p in ours.iter_parts()] == [
        p["Content-Transfer-Encoding"] for p in theirs.iter_parts()
    ]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_fast_message_carries_the_campaign_as_written(make: Make, case: Case) -> None:
    messages, d = make(case)
    content = messages.content(d)
    _, ours = fast(messages, d)
    sender = case.from_name or "Acme Tea"
    assert _addresses(ours, "From") == [(" ".join(sender.split()), SENDER)]
    assert _addresses(ours, "To") == [(case.name, case.email)]
    assert _addresses(ours, "Reply-To") == [("", case.reply_to or "help@acme.example")]
    assert ours["Subject"] == content.subject
    assert ours["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert ours["MIME-Version"] == "1.0"
    unsubscribe = str(ours["List-Unsubscribe"])
    assert unsubscribe.startswith("<http://127.0.0.1:8000/u/")
    assert unsubscribe.endswith(">")
    assert links.read_token(links.Purpose.UNSUBSCRIBE, unsubscribe[1:-1].rstrip("/").rpartition("/")[2]).subscriber
    assert verp.token_delivery_id(ours["X-Assent-Delivery"]) == d.pk
    assert ours["List-Id"] == links.list_id(d.campaign.audiences.get())
    text, html = bodies(ours)
    # The parser keeps the wire's CRLF inside the decoded content.
    assert _same_links(text.replace("\r\n", "\n")) == _same_links(content.text)
    assert _same_links(html.replace("\r\n", "\n")) == _same_links(content.html)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_bytes_are_crlf_lines_of_at_most_998_octets(make: Make, case: Case) -> None:
    messages, d = make(case)
    built = messages.build(d)
    assert built is not None
    assert_wire_format(built.data)


def test_a_line_longer_than_998_octets_goes_quoted_printable_and_decodes_back_exactly(make: Make) -> None:
    messages, d = make(Case(html=LONG_GERMAN_HTML))
    content = messages.content(d)
    assert max(len(line.encode()) for line in content.html.splitlines()) > 998
    _, ours = fast(messages, d)
    _, html = ours.iter_parts()
    assert html["Content-Transfer-Encoding"] == "quoted-printable"
    assert _same_links(html.get_content().replace("\r\n", "\n")) == _same_links(content.html)


def test_a_short_line_of_many_octets_goes_quoted_printable_too(make: Make) -> None:
    messages, d = make(Case(html="<p>" + "ü" * 600 + "</p>"))
    built, ours = fast(messages, d)
    assert [p["Content-Transfer-Encoding"] for p in ours.iter_parts()] == [
        p["Content-Transfer-Encoding"] for p in django(messages, d).iter_parts()
    ]
    assert_wire_format(built.data)


def test_a_body_that_ends_with_a_line_break_keeps_it(make: Make, brand: Brand) -> None:
    brand.postal_address = "Acme Tea\n2 Leaf Lane\nBristol BS1 1AA\n"
    brand.save(update_fields=["postal_address"])
    messages, d = make(Case())
    assert messages.content(d).text.endswith("\n")
    _, ours = fast(messages, d)
    assert [_same_links(b) for b in bodies(ours)] == [_same_links(b) for b in bodies(django(messages, d))]


def test_every_encoded_word_of_a_usual_message_is_at_most_75_characters(make: Make) -> None:
    messages, d = make(CASES["umlauts-and-emoji"])
    built, _ = fast(messages, d)
    words = _ENCODED_WORD.findall(built.data.partition(b"\r\n\r\n")[0])
    assert words
    assert max(map(len, words)) <= 75  # RFC 2047 section 2


def test_a_long_non_ascii_name_is_split_into_encoded_words_of_at_most_75_characters(make: Make) -> None:
    name = "Jürgen Müller-Lüdenscheidt von Überlingen-Großbottwar"
    messages, d = make(Case(name=name, email="jm@example.de"))
    built, ours = fast(messages, d)
    words = _ENCODED_WORD.findall(built.data.partition(b"\r\n\r\n")[0])
    assert max(map(len, words)) <= 75
    # RFC 2047 6.2: the space between two encoded words is not part of the name (the email package's
    # address parser keeps it, so decode the raw header as RFC 2047 says).
    assert str(make_header(decode_header(dict(ours.raw_items())["To"]))) == f"{name} <jm@example.de>"


def test_a_non_ascii_audience_name_leaves_the_list_id_itself_readable(make: Make, news: Audience) -> None:
    news.name = "Wöchentliche Neuigkeiten"
    news.save(update_fields=["name"])
    messages, d = make(Case())
    list_id = f"<wochentliche-neuigkeiten.{news.pk}.{news.brand_id}.127.0.0.1>"
    _, ours = fast(messages, d)
    theirs = django(messages, d)
    for message in (ours, theirs):
        assert str(message["List-Id"]).strip() == f"Wöchentliche Neuigkeiten {list_id}"
        assert list_id in dict(message.raw_items())["List-Id"]


def test_a_reply_to_address_on_an_idn_domain_is_a_usable_address(make: Make) -> None:
    messages, d = make(Case(reply_to="hilfe@bücher.example"))
    _, ours = fast(messages, d)
    assert _addresses(ours, "Reply-To") == _addresses(django(messages, d), "Reply-To")


def test_a_sender_on_an_idn_domain_is_written_in_punycode(make: Make, brand: Brand) -> None:
    brand.from_email = "news@bücher.example"
    brand.save(update_fields=["from_email"])
    messages, d = make(Case())
    built, ours = fast(messages, d)
    assert _addresses(ours, "From") == [("Acme Tea", "news@xn--bcher-kva.example")]
    assert built.envelope_from == "news@xn--bcher-kva.example"
    assert ours["Message-ID"].endswith("@xn--bcher-kva.example>")
    assert_wire_format(built.data)


# --- Header injection ---------------------------------------------------------------------------------


INJECTIONS = [
    "Hi\r\nBcc: evil@example.com",
    "Hi\nBcc: evil@example.com\n\n<p>a body</p>",
    "Hi\rX-Injected: yes",
    "Hi\u2028X-Injected: yes\x85Bcc: evil@example.com",
]


@pytest.mark.parametrize("attack", INJECTIONS)
def test_line_breaks_in_a_subject_or_name_never_make_another_header(make: Make, attack: str) -> None:
    case = Case(
        subject="{{ subscriber.attributes.subject }}",
        attributes={"subject": attack},
        from_name=attack,
        name=attack.replace("Hi", "Pat"),
    )
    messages, d = make(case)
    built, ours = fast(messages, d)
    theirs = django(messages, d)
    assert_wire_format(built.data)
    for message in (ours, theirs):
        assert_header_names(message)
        flat = " ".join(attack.split())
        assert message["Subject"] == flat
        assert _addresses(message, "From") == [(flat, SENDER)]
        assert _addresses(message, "To") == [(flat.replace("Hi", "Pat"), "pat@example.com")]


# --- Envelope and Message-ID -------------------------------------------------------------------------------


def test_with_a_bounce_address_the_envelope_sender_is_the_deliverys_verp_address(make: Make, settings: Any) -> None:
    settings.BOUNCE_ADDRESS = BOUNCES
    messages, d = make(Case())
    built, ours = fast(messages, d)
    assert built.envelope_from.startswith(f"bounces+d{d.pk}.")
    assert built.envelope_from.endswith("@mail.acme.example")
    assert verp.delivery_id(built.envelope_from) == d.pk
    assert built.recipient == "pat@example.com"
    assert _addresses(ours, "From") == [("Acme Tea", SENDER)]  # what the reader sees does not change
    message, _ = messages.django_message(d, smtp=True)  # Django's SMTP backend: from_email is MAIL FROM
    assert message.from_email == built.envelope_from
    assert message.extra_headers["From"] == f"Acme Tea <{SENDER}>"


def test_without_a_bounce_address_the_envelope_sender_is_the_sender(make: Make, settings: Any) -> None:
    settings.BOUNCE_ADDRESS = ""
    messages, d = make(Case())
    built = messages.build(d)
    assert built is not None
    assert built.envelope_from == SENDER
    assert verp.delivery_id(built.envelope_from) is None


def test_message_ids_are_unique_across_builds(make: Make, signup_form: SignupForm, news: Audience) -> None:
    messages, d = make(Case())
    others = [_person(signup_form, news, Case(email=f"p{n}@example.com")) for n in range(3)]
    delivery.plan(d.campaign)
    deliveries = list(Delivery.objects.select_related("subscriber").filter(campaign=d.campaign))
    assert len(deliveries) == 1 + len(others)
    ids = []
    for _ in range(50):
        for each in deliveries:
            built, ours = fast(messages, each)
            assert ours["Message-ID"] == built.message_id
            ids.append(built.message_id)
    ids.extend(messages.django_message(d)[1] for _ in range(50))
    assert len(set(ids)) == len(ids) == 250


# --- Addresses only Django's backend can send ---------------------------------------------------------------


@pytest.mark.parametrize("address", ["jürgen@example.de", "pat@bücher.example"])
def test_a_non_ascii_recipient_address_is_left_to_djangos_backend(make: Make, address: str) -> None:
    messages, d = make(Case(email=address))
    assert messages.build(d) is None
    message, _ = messages.django_message(d)
    [recipient] = message.recipients()
    domain = address.rpartition("@")[2]
    # What Django's SMTP backend gives RCPT TO: the domain in punycode (a non-ASCII local part is its business).
    assert sanitize_address(recipient, "utf-8").endswith(f"@{punycode(domain)}>")


# --- On the wire: smtplib and the real send path ------------------------------------------------------------------


@pytest.fixture
def smtp(mail_server: MailServer, settings: Any) -> Iterator[MailServer]:
    """Django's SMTP backend pointed at the aiosmtpd test server."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = mail_server.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_TIMEOUT = 5  # a failing test waits seconds, not the default 30
    mail_server.clear()
    yield mail_server
    mail_server.clear()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_what_smtplib_delivers_is_exactly_what_was_built(make: Make, smtp: MailServer, case: Case) -> None:
    messages, d = make(case)
    built, ours = fast(messages, d)
    with smtplib.SMTP("127.0.0.1", smtp.port, timeout=10) as client:
        client.sendmail(built.envelope_from, [built.recipient], built.data)
    [received] = smtp.wait_for(1)
    assert smtp.envelopes == [(built.envelope_from, [built.recipient])]
    assert list(received.raw_items()) == list(ours.raw_items())
    assert [p.get_payload() for p in received.iter_parts()] == [p.get_payload() for p in ours.iter_parts()]
    assert bodies(received) == bodies(ours)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-command-at-a-time"])
def test_lines_that_begin_with_a_dot_arrive_intact_through_the_send_path(
    make: Make, smtp: MailServer, settings: Any, pipelining: bool
) -> None:
    settings.BOUNCE_ADDRESS = BOUNCES
    smtp.pipelining = pipelining
    messages, d = make(CASES["dots"])
    content = messages.content(d)
    Campaign.objects.filter(pk=d.campaign_id).update(status=Campaign.Status.SENDING)
    result = delivery.send_batch(campaign_id=d.campaign_id)
    assert (result.sent, result.failed, result.retry) == (1, 0, 0)
    [received] = smtp.wait_for(1)
    [(envelope_from, recipients)] = smtp.envelopes
    assert verp.delivery_id(envelope_from or "") == d.pk
    assert recipients == ["pat@example.com"]
    text, html = (b.replace("\r\n", "\n") for b in bodies(received))
    assert "\n.\n.hidden line\n..two dots\n. a dot and a space\n" in text
    assert _same_links(text) == _same_links(content.text)
    assert _same_links(html) == _same_links(content.html)
    d.refresh_from_db()
    assert (d.status, d.message_id) == (Delivery.Status.SENT, received["Message-ID"])


def _batch_of_three(make: Make, signup_form: SignupForm, news: Audience) -> Campaign:
    """A sending campaign planned for ann, bob and zoe (in that order)."""
    _, d = make(Case(email="ann@example.com"))
    for address in ("bob@example.com", "zoe@example.com"):
        _person(signup_form, news, Case(email=address))
    delivery.plan(d.campaign)
    Campaign.objects.filter(pk=d.campaign_id).update(status=Campaign.Status.SENDING)
    return d.campaign


def _statuses(campaign: Campaign) -> dict[str, str]:
    return dict(Delivery.objects.filter(campaign=campaign).values_list("subscriber__email", "status"))


def _assert_each_sent_delivery_arrived_once(campaign: Campaign, smtp: MailServer) -> None:
    sent = Delivery.objects.filter(campaign=campaign, status=Delivery.Status.SENT)
    assert smtp.received() == {d.subscriber.email: 1 for d in sent}
    assert sorted(m["Message-ID"] for m in smtp.messages) == sorted(d.message_id for d in sent)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-command-at-a-time"])
@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("451 4.3.0 Mailbox busy, try again later", Delivery.Status.QUEUED),
        ("421 4.3.2 Service shutting down", Delivery.Status.QUEUED),
        (DROP, Delivery.Status.QUEUED),
        ("550 5.1.1 No such user", Delivery.Status.FAILED),
    ],
)
def test_a_refused_message_is_classified_and_nothing_is_lost_or_sent_twice(
    make: Make,
    smtp: MailServer,
    signup_form: SignupForm,
    news: Audience,
    settings: Any,
    pipelining: bool,
    reply: str,
    outcome: str,
) -> None:
    settings.BOUNCE_ADDRESS = BOUNCES  # a different envelope sender per message, as in production
    smtp.pipelining = pipelining
    campaign = _batch_of_three(make, signup_form, news)
    smtp.answers["bob@example.com"] = [reply]
    delivery.send_batch(campaign_id=campaign.pk)
    statuses = _statuses(campaign)
    assert statuses["ann@example.com"] == Delivery.Status.SENT
    assert statuses["bob@example.com"] == outcome
    # Pipelined, zoe's envelope went out with bob's message: when the connection ends there, her fate is
    # unknown and she is queued again (a retry, never a loss); otherwise she is sent.
    in_flight = pipelining and reply.startswith(("421", DROP))
    assert statuses["zoe@example.com"] in ({"sent", "queued"} if in_flight else {"sent"})
    _assert_each_sent_delivery_arrived_once(campaign, smtp)
    # The retries, once due, go out; nobody gets a second copy.
    Delivery.objects.filter(campaign=campaign, status=Delivery.Status.QUEUED).update(retry_at=None)
    delivery.send_batch(campaign_id=campaign.pk)
    assert _statuses(campaign) == {
        "ann@example.com": "sent",
        "bob@example.com": "sent" if outcome == Delivery.Status.QUEUED else "failed",
        "zoe@example.com": "sent",
    }
    _assert_each_sent_delivery_arrived_once(campaign, smtp)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-command-at-a-time"])
def test_after_a_421_to_rcpt_the_next_message_goes_out_on_a_new_connection(
    make: Make, smtp: MailServer, signup_form: SignupForm, news: Audience, pipelining: bool
) -> None:
    smtp.pipelining = pipelining
    campaign = _batch_of_three(make, signup_form, news)
    smtp.rcpt_answers["bob@example.com"] = "421 4.3.2 Service shutting down"
    delivery.send_batch(campaign_id=campaign.pk)
    assert _statuses(campaign) == {"ann@example.com": "sent", "bob@example.com": "queued", "zoe@example.com": "sent"}
    _assert_each_sent_delivery_arrived_once(campaign, smtp)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-command-at-a-time"])
def test_a_non_ascii_recipient_does_not_cost_the_batch_its_results(
    make: Make, smtp: MailServer, signup_form: SignupForm, news: Audience, pipelining: bool
) -> None:
    smtp.pipelining = pipelining
    _, d = make(Case(email="ann@example.com"))
    _person(signup_form, news, Case(email="pat@bücher.example"))
    _person(signup_form, news, Case(email="zoe@example.com"))
    delivery.plan(d.campaign)
    Campaign.objects.filter(pk=d.campaign_id).update(status=Campaign.Status.SENDING)
    try:
        result = delivery.send_batch(campaign_id=d.campaign_id)
    finally:
        in_flight = Delivery.objects.filter(campaign_id=d.campaign_id, status=Delivery.Status.SENDING).count()
    assert in_flight == 0
    assert result.sent == 3
    assert smtp.received() == {"ann@example.com": 1, "pat@xn--bcher-kva.example": 1, "zoe@example.com": 1}


# --- Other backends -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "anymail"),
    [
        ("postmark", {"POSTMARK_SERVER_TOKEN": "pm-server-token"}),
        ("sendgrid", {"SENDGRID_API_KEY": "SG.abc.def"}),
        ("brevo", {"BREVO_API_KEY": "xkeysib-123"}),
    ],
)
def test_a_provider_without_envelope_senders_can_send_a_campaign_message(
    make: Make, settings: Any, backend: str, anymail: dict[str, str]
) -> None:
    # A From header beside from_email makes anymail ask for an envelope sender, which these refuse.
    settings.EMAIL_BACKEND = f"anymail.backends.{backend}.EmailBackend"
    settings.ANYMAIL = anymail
    settings.BOUNCE_ADDRESS = BOUNCES  # VERP is for plain SMTP only
    messages, d = make(Case())
    message, _ = messages.django_message(d)
    assert message.from_email == f"Acme Tea <{SENDER}>"
    assert "From" not in message.extra_headers
    connection: Any = get_connection()
    payload = connection.build_message_payload(message, connection.send_defaults)  # what would be posted
    posted = json.dumps(payload.data, default=str)
    assert SENDER in posted
    assert "bounces+" not in posted
