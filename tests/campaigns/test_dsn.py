"""Parsing bounce reports (RFC 3464 / 6533 DSNs, RFC 5965 ARF, plain-text bounces) from real-format samples."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from campaigns import dsn, verp
from campaigns.bounces import Report
from tests.campaigns.bounce_samples import BOUNCE_ADDRESS, SAMPLES, sample

DELIVERY = 4711


@pytest.fixture(autouse=True)
def _bounce_address(settings: Any) -> None:
    settings.BOUNCE_ADDRESS = BOUNCE_ADDRESS


def parse(raw: bytes) -> list[Report]:
    return dsn.parse(raw, provider="mailbox")


def only(raw: bytes) -> Report:
    reports = parse(raw)
    assert len(reports) == 1, reports
    return reports[0]


# name, event_type, recipient, smtp_status, delivery_id, original Message-ID (its unique part), description starts
EXPECTED = [
    ("postfix-5.1.1.eml", "bounced", "dana@example.com", "5.1.1", DELIVERY, "d101",
     "550 5.1.1 <dana@example.com>: Recipient address rejected: User unknown in virtual mailbox table"),
    ("delayed-4.2.2.eml", "deferred", "frank@example.net", "4.2.2", DELIVERY, "d103", "452 4.2.2 Mailbox full"),
    ("policy-5.7.1.eml", "bounced", "gina@example.com", "5.7.1", DELIVERY, "d104",
     "550 5.7.1 Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org"),
    ("gmail-dsn.eml", "bounced", "hank.no.such.user@gmail.com", "5.1.1", DELIVERY, "d105",
     "550-5.1.1 The email account that you tried to reach does not exist."),
    ("microsoft-dsn.eml", "bounced", "ivy@contoso.com", "5.1.10", 106, "d106",
     "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient ivy@contoso.com not found by SMTP address lookup"),
    ("global-dsn.eml", "bounced", "jürgen@bücher.example", "5.1.1", DELIVERY, "d107", 'unknown user: "jürgen"'),
    ("plain-bounce.eml", "bounced", "liam@oldhost.example", "5.1.1", DELIVERY, "d108", "550 5.1.1 User unknown"),
    ("qmail-bounce.eml", "bounced", "nina@tinyhost.example", "5.1.2", DELIVERY, "d111",
     "Sorry, I couldn't find any host named tinyhost.example. (#5.1.2)"),
    ("arf-abuse.eml", "complained", "Jack.Doe@aol.com", "", DELIVERY, "d109",
     "This is an email abuse report for an email message received from IP 192.0.2.10"),
    ("arf-headers-only.eml", "complained", "kate@yahoo.com", "", DELIVERY, "d110",
     "This is an email abuse report for an email message from acme.example"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "event_type", "recipient", "status", "delivery_id", "message_id", "description"),
                         EXPECTED, ids=[e[0] for e in EXPECTED])  # fmt: skip
def test_it_reads_each_sample(
    name: str, event_type: str, recipient: str, status: str, delivery_id: int, message_id: str, description: str
) -> None:
    report = only(sample(name, DELIVERY))

    assert (report.provider, report.event_type, report.recipient) == ("mailbox", event_type, recipient)
    assert report.smtp_status == status
    assert report.delivery_id == delivery_id
    assert re.fullmatch(rf"<\d+\.4242\.\d+{message_id}@mail\.acme\.example>", report.message_id)
    assert report.description.startswith(description)
    assert report.event_id.startswith("mail:")


def test_every_sample_is_covered() -> None:
    covered = {e[0] for e in EXPECTED} | {"exim-dsn.eml", "autoreply.eml", "garbage.eml"}
    assert {path.name for path in SAMPLES.glob("*.eml")} == covered


def test_it_gives_one_report_per_recipient_and_the_specific_status_over_a_generic_one() -> None:
    reports = parse(sample("exim-dsn.eml"))

    # Exim says "Status: 5.0.0" for every failure; the server's reply names the real reason.
    assert [(r.recipient, r.smtp_status, r.event_type) for r in reports] == [
        ("Eve.Smith@example.org", "5.1.1", "bounced"),
        ("eve@old.example.org", "5.2.1", "bounced"),
    ]
    assert reports[1].description == "550 5.2.1 <eve@old.example.org>: Mailbox disabled for this recipient"
    assert len({r.event_id for r in reports}) == 2


def test_it_keeps_what_the_report_said_in_details() -> None:
    bounce = only(sample("postfix-5.1.1.eml"))
    complaint = only(sample("arf-abuse.eml"))

    assert bounce.details == {
        "action": "failed",
        "reporting_mta": "mail.acme.example",
        "mta_response": bounce.description,
        "delivery_source": "verp",
    }
    assert bounce.occurred_at == datetime(2025, 11, 18, 10, 15, 1, tzinfo=UTC)
    assert complaint.details["feedback_type"] == "abuse"
    assert complaint.details["reporting_mta"] == "omr-m021.mx.aol.com"
    assert complaint.details["source_ip"] == "192.0.2.10"
    assert complaint.occurred_at == datetime(2025, 11, 25, 8, 10, 58, tzinfo=UTC)


def test_reading_the_same_message_again_gives_the_same_event_ids() -> None:
    first = [r.event_id for name in ("postfix-5.1.1.eml", "arf-abuse.eml") for r in parse(sample(name))]
    again = [r.event_id for name in ("postfix-5.1.1.eml", "arf-abuse.eml") for r in parse(sample(name))]

    assert first == again
    assert len(set(first)) == 2


def test_a_report_without_a_message_id_is_identified_by_its_bytes() -> None:
    raw = sample("policy-5.7.1.eml").replace(b"Message-Id: <20251121090012.4Y1cD2eFg3h4@mail.acme.example>\n", b"")

    assert only(raw).event_id == only(raw).event_id
    assert only(raw).event_id != only(sample("policy-5.7.1.eml")).event_id


def test_a_forged_verp_signature_names_no_delivery() -> None:
    genuine = verp.return_path(DELIVERY)
    assert genuine is not None
    forged = genuine.replace(f"d{DELIVERY}.", "d4712.")  # another delivery, the same signature

    report = only(sample("postfix-5.1.1.eml").replace(genuine.encode(), forged.encode()))

    # Nor does the returned message's X-Assent-Delivery header count: the report is not ours.
    assert report.delivery_id is None
    assert report.details["delivery_source"] == "forged-verp"
    assert report.recipient == "dana@example.com"


def test_a_verp_signature_made_with_another_secret_key_names_no_delivery(settings: Any) -> None:
    raw = sample("arf-abuse.eml")
    settings.SECRET_KEY = "another key"

    assert only(raw).delivery_id is None


def test_without_verp_the_returned_message_header_names_the_delivery() -> None:
    report = only(sample("microsoft-dsn.eml"))

    assert report.delivery_id == 106
    assert report.details["delivery_source"] == "header"


@pytest.mark.parametrize(
    "header",
    [
        "106",  # a bare number, as anyone could write it
        "d107.{signature}",  # another delivery with 106's signature
        "d106.0000000000",  # a made-up signature
        "d106.{signature}x",  # a genuine token with something after it
        "{token}, d107.0000000000",
    ],
    ids=["bare-number", "swapped-id", "made-up-signature", "trailing-junk", "two-tokens"],
)
def test_a_bare_or_forged_delivery_header_names_no_delivery(header: str) -> None:
    genuine = verp.token(106)
    raw = sample("microsoft-dsn.eml")
    assert f"X-Assent-Delivery: {genuine}\n".encode() in raw
    forged = header.format(token=genuine, signature=genuine.partition(".")[2])

    report = only(raw.replace(genuine.encode(), forged.encode()))

    assert report.delivery_id is None
    assert report.details["delivery_source"] == "forged-header"
    assert report.recipient == "ivy@contoso.com"  # still recorded, but about no delivery of ours


def test_a_delivery_header_signed_with_another_secret_key_names_no_delivery(settings: Any) -> None:
    raw = sample("microsoft-dsn.eml")
    settings.SECRET_KEY = "another key"

    report = only(raw)

    assert (report.delivery_id, report.details["delivery_source"]) == (None, "forged-header")


def test_gmail_names_the_original_message_in_the_status_when_none_is_returned() -> None:
    raw = sample("gmail-dsn.eml")
    raw = raw[: raw.index(b"--000000000000c2a1b80643f0d5e1\nContent-Type: text/rfc822-headers")]
    raw += b"--000000000000c2a1b80643f0d5e1--\n"

    report = only(raw)

    assert report.message_id == "<176382611001.4242.9081726354412376412d105@mail.acme.example>"
    assert report.delivery_id == DELIVERY  # from the VERP address the DSN was sent to


@pytest.mark.parametrize(
    ("feedback_type", "event_type"),
    [("abuse", "complained"), ("fraud", "complained"), ("virus", "other"), ("other", "other"), ("not-spam", "other")],
)
def test_feedback_types(feedback_type: str, event_type: str) -> None:
    raw = sample("arf-abuse.eml").replace(b"Feedback-Type: abuse", f"Feedback-Type: {feedback_type}".encode())

    report = only(raw)

    assert (report.event_type, report.details["feedback_type"]) == (event_type, feedback_type)


def test_a_feedback_report_with_the_recipient_redacted_still_names_the_delivery() -> None:
    raw = sample("arf-headers-only.eml").replace(b"To: kate@yahoo.com", b"To: redacted")

    report = only(raw)

    assert (report.recipient, report.event_type, report.delivery_id) == ("", "complained", DELIVERY)


def test_actions_delivered_relayed_and_expanded_are_deliveries() -> None:
    raw = sample("delayed-4.2.2.eml")

    for action in (b"delivered", b"relayed", b"expanded"):
        report = only(raw.replace(b"Action: delayed", b"Action: " + action))
        assert report.event_type == "delivered"
        assert report.details["action"] == action.decode()


def test_a_status_is_never_read_from_an_ip_address() -> None:
    raw = sample("plain-bounce.eml").replace(b"550 5.1.1 User unknown", b"550 User unknown at 10.5.1.20")

    assert parse(raw) == []  # no enhanced status: not understood, rather than a made-up 5.1.20


def test_an_autoreply_is_not_a_bounce() -> None:
    assert parse(sample("autoreply.eml")) == []


def test_a_plain_message_that_mentions_a_status_is_not_a_bounce() -> None:
    raw = sample("autoreply.eml").replace(b"I am away", b"Our server said 550 5.1.1 for office@example.com; I am away")

    assert parse(raw) == []


@pytest.mark.parametrize(
    "raw",
    [
        (SAMPLES / "garbage.eml").read_bytes(),
        b"",
        b"\x00\x01\x02\xff" * 100,
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\nContent-Type: "
        b"message/delivery-status\n\nReporting-MTA: dns; x\n\nFinal-Recipient: rfc822; a@b.example\nAction: exploded",
        b"Content-Type: multipart/report; report-type=feedback-report; boundary=x\n\n--x\nContent-Type: "
        b"message/feedback-report\n\n\n--x--\n",
    ],
    ids=["garbage.eml", "empty", "binary", "unknown-action", "empty-feedback-report"],
)
def test_garbage_gives_nothing_and_never_raises(raw: bytes) -> None:
    assert parse(raw) == []


def test_a_truncated_dsn_still_gives_the_recipient_blocks_it_has() -> None:
    raw = sample("postfix-5.1.1.eml")
    raw = raw[: raw.index(b"Remote-MTA: dns; mx1.example.com")]

    report = only(raw)

    assert (report.recipient, report.smtp_status, report.event_type) == ("dana@example.com", "5.1.1", "bounced")
    assert report.message_id == ""  # the returned message was cut off
