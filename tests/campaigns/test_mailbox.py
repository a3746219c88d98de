"""The bounce-mailbox reader (``manage.py read_bounces``) against real POP3 and IMAP (Dovecot) servers."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from audiences.models import Audience, ConsentEvent, SignupForm, Subscriber, Suppression
from campaigns.mailbox import Mailbox, parse_url
from campaigns.models import Campaign, Delivery, DeliveryEvent
from tests.campaigns.bounce_samples import BOUNCE_ADDRESS, sample
from tests.campaigns.test_delivery import HTML, confirmed, send_now
from tests.conftest import ROOT
from tests.mailboxes import PASSWORD, USER, Dovecot, POP3Server, require_dovecot
from tests.mailserver import free_port

# Four reports in three messages (the Exim DSN names two recipients), and two messages that are no report.
PARSED = {"postfix-5.1.1.eml": 1, "arf-abuse.eml": 2, "exim-dsn.eml": 3}
UNPARSED = ["autoreply.eml", "garbage.eml"]
EVENTS = [
    ("bounced", "5.1.1", 1),
    ("complained", "", 2),
    ("bounced", "5.1.1", 3),
    ("bounced", "5.2.1", 3),
]


@pytest.fixture(autouse=True)
def _bounce_address(settings: Any) -> None:
    settings.BOUNCE_ADDRESS = BOUNCE_ADDRESS


def messages() -> list[bytes]:
    """The three reports and two other messages, interleaved as a real mailbox would be."""
    names = ["postfix-5.1.1.eml", "autoreply.eml", "arf-abuse.eml", "garbage.eml", "exim-dsn.eml"]
    return [sample(name, PARSED.get(name, 0)) for name in names]


def read_bounces(*args: str) -> str:
    out = io.StringIO()
    call_command("read_bounces", "--once", *args, stdout=out)
    return out.getvalue()


def events() -> list[tuple[str, str, int]]:
    rows = DeliveryEvent.objects.filter(provider="mailbox").order_by("pk")
    return [(e.event_type, e.smtp_status, e.details["delivery_id"]) for e in rows]


def subjects(raws: list[bytes]) -> list[str]:
    """Which messages these are: the autoreply and the garbage are told apart by their first bytes."""
    return ["autoreply" if b"Out of office" in raw else "garbage" if b"nonsense" in raw else "report" for raw in raws]


# --- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("imaps://bounces:pw@mail.example.com/INBOX", Mailbox("imaps", "mail.example.com", 993, "bounces", "pw")),
        ("imap://u:pw@h", Mailbox("imap", "h", 143, "u", "pw")),
        (
            "imap://bounces%40example.com:p%40ss%2Fw%3Ard@h:1143/Bounce%20box?processed=Done&unparsed=Odd&starttls=true",
            Mailbox("imap", "h", 1143, "bounces@example.com", "p@ss/w:rd", "Bounce box", "Done", "Odd", True),
        ),
        ("pop3://u:pw@h", Mailbox("pop3", "h", 110, "u", "pw")),
        ("pop3s://u:pw@h:1995?timeout=5", Mailbox("pop3s", "h", 1995, "u", "pw", timeout=5.0)),
    ],
)
def test_it_reads_mailbox_urls(url: str, expected: Mailbox) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("smtp://u:topsecret@h", "must start with imap://"),
        ("imap://h/INBOX", "must name a user, a password and a host"),
        ("imap://u@h", "must name a user, a password and a host"),
        ("pop3://u:topsecret@h/INBOX", "POP3 has no folders"),
        ("pop3://u:topsecret@h?processed=Done", "POP3 has no folders"),
        ("imap://u:topsecret@h?delete=no", "unknown options: delete"),
        ("imaps://u:topsecret@h?starttls=true", "is TLS already"),
        ("imap://u:topsecret@h?starttls=maybe", "starttls must be true or false"),
        ("imap://u:topsecret@h?timeout=soon", "timeout must be a number"),
        ("imap://u:topsecret@h?timeout=-1", "timeout must be a positive number"),
        ("imap://u:topsecret@h?timeout=nan", "timeout must be a positive number"),
        ("imap://u:topsecret@h:99999", "invalid port"),
    ],
)
def test_a_malformed_url_says_why_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message) as raised:
        parse_url(url)
    assert "topsecret" not in str(raised.value)


def test_without_a_mailbox_the_command_says_how_to_configure_one(settings: Any) -> None:
    settings.BOUNCE_MAILBOX_URL = ""

    with pytest.raises(CommandError, match="set BOUNCE_MAILBOX_URL or pass --url"):
        read_bounces()


# --- POP3 -------------------------------------------------------------------------------------


@pytest.fixture
def pop3() -> Iterator[POP3Server]:
    with POP3Server() as server:
        for raw in messages():
            server.add(raw)
        yield server


def test_a_pop3_pass_records_the_reports_deletes_them_and_keeps_the_rest(
    db: None, pop3: POP3Server, settings: Any
) -> None:
    settings.BOUNCE_MAILBOX_URL = pop3.url()

    output = read_bounces()

    assert events() == EVENTS
    assert subjects(pop3.messages) == ["autoreply", "garbage"]
    assert "5 messages: 4 events recorded, 0 already recorded, 3 removed, 2 not understood" in output
    assert pop3.commands[-1] == "QUIT"


def test_a_second_pop3_pass_records_nothing_new(db: None, pop3: POP3Server) -> None:
    read_bounces("--url", pop3.url())

    output = read_bounces("--url", pop3.url())

    assert events() == EVENTS
    assert "2 messages: 0 events recorded, 0 already recorded, 0 removed, 2 not understood" in output
    assert subjects(pop3.messages) == ["autoreply", "garbage"]


def test_a_message_whose_deletion_was_lost_is_a_replay_next_time(db: None, pop3: POP3Server) -> None:
    pop3.drop_at_quit = True  # the connection dies after the records were committed, before the server deleted

    with pytest.raises(CommandError, match=r"^pop3://bounces@127\.0\.0\.1:\d+: "):
        read_bounces("--url", pop3.url())
    assert events() == EVENTS
    assert len(pop3.messages) == 5

    pop3.drop_at_quit = False
    output = read_bounces("--url", pop3.url())

    assert events() == EVENTS
    assert "5 messages: 0 events recorded, 4 already recorded, 3 removed, 2 not understood" in output
    assert subjects(pop3.messages) == ["autoreply", "garbage"]


def test_a_wrong_pop3_password_is_one_clear_line_and_changes_nothing(db: None, pop3: POP3Server) -> None:
    with pytest.raises(CommandError) as raised:
        read_bounces("--url", pop3.url(password="wrong-password"))

    message = str(raised.value)
    assert message == f"pop3://bounces@127.0.0.1:{pop3.port}: -ERR [AUTH] Authentication failed"
    assert "wrong-password" not in message
    assert events() == []
    assert len(pop3.messages) == 5


def test_a_mailbox_that_does_not_answer_is_one_clear_line() -> None:
    port = free_port()

    with pytest.raises(CommandError, match=rf"^pop3s://u@127\.0\.0\.1:{port}: ConnectionRefusedError: .*refused$"):
        read_bounces("--url", f"pop3s://u:p@127.0.0.1:{port}")


@pytest.mark.django_db(transaction=True)
def test_the_polling_loop_retries_until_the_mailbox_answers_and_stops_on_sigterm(tmp_path: Any) -> None:
    port = free_port()
    db = django_settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "BOUNCE_ADDRESS": BOUNCE_ADDRESS,
        "BOUNCE_MAILBOX_URL": f"pop3://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}",
        "CELERY_TASK_ALWAYS_EAGER": "true",  # processing runs in the reader; no worker here
        "SECRET_KEY": django_settings.SECRET_KEY,
    }
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "read_bounces", "--interval", "1"],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        wait_for(lambda: "retrying in 1s" in err.read_text(), what="a connection error", process=process)
        with POP3Server(port=port) as server:
            for raw in messages():
                server.add(raw)
            wait_for(lambda: "4 events recorded" in out.read_text(), what="a pass", process=process)
            wait_for(lambda: len(server.messages) == 2, what="the deletions", process=process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()
    assert events() == EVENTS
    assert err.read_text().splitlines()[0].startswith(f"pop3://bounces@127.0.0.1:{port}: ConnectionRefusedError")


def wait_for(condition: Any, *, what: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"read_bounces exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout}s")
        time.sleep(0.1)


# --- IMAP (Dovecot) ---------------------------------------------------------------------------


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    require_dovecot()
    with Dovecot() as server:
        for raw in messages():
            server.append(raw)
        yield server


def test_an_imap_pass_records_the_reports_deletes_them_and_keeps_the_rest(db: None, dovecot: Dovecot) -> None:
    output = read_bounces("--url", dovecot.url())

    assert events() == EVENTS
    assert subjects(dovecot.messages()) == ["autoreply", "garbage"]
    assert "5 messages: 4 events recorded, 0 already recorded, 3 removed, 2 not understood" in output
    assert "expunged=3" in dovecot.log()


def test_a_second_imap_pass_records_nothing_new(db: None, dovecot: Dovecot) -> None:
    read_bounces("--url", dovecot.url())

    output = read_bounces("--url", dovecot.url())

    assert events() == EVENTS
    assert "2 messages: 0 events recorded, 0 already recorded, 0 removed, 2 not understood" in output


@pytest.mark.parametrize("capability", ["", "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE UIDPLUS"], ids=["move", "copy"])
def test_imap_can_move_messages_to_folders_instead(db: None, capability: str) -> None:
    require_dovecot()
    with Dovecot(capability=capability) as dovecot:  # without MOVE: COPY, \Deleted and EXPUNGE
        for raw in messages():
            dovecot.append(raw)

        read_bounces("--url", dovecot.url(query="processed=Done&unparsed=Not%20bounces"))

        assert events() == EVENTS
        assert dovecot.messages() == []
        assert subjects(dovecot.messages("Done")) == ["report"] * 3
        assert subjects(dovecot.messages("Not bounces")) == ["autoreply", "garbage"]


def test_a_wrong_imap_password_is_one_clear_line(db: None, dovecot: Dovecot) -> None:
    with pytest.raises(CommandError) as raised:
        read_bounces("--url", dovecot.url(password="wrong-password"))

    assert str(raised.value) == (
        f"imap://bounces@127.0.0.1:{dovecot.port}: [AUTHENTICATIONFAILED] Authentication failed."
    )
    assert events() == []
    assert len(dovecot.messages()) == 5


def test_a_missing_imap_folder_is_one_clear_line(dovecot: Dovecot) -> None:
    with pytest.raises(CommandError, match=r": cannot open folder 'Bounces': Mailbox doesn't exist: Bounces"):
        read_bounces("--url", dovecot.url(folder="Bounces"))


@pytest.fixture
def dovecot_tls() -> Iterator[Dovecot]:
    require_dovecot(tls=True)
    with Dovecot(tls=True) as server:
        for raw in messages():
            server.append(raw)
        yield server


@pytest.mark.parametrize(("scheme", "query"), [("imaps", ""), ("imap", "starttls=true")])
def test_imap_over_tls_verifies_the_certificate(
    db: None, dovecot_tls: Dovecot, monkeypatch: pytest.MonkeyPatch, scheme: str, query: str
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(CommandError, match="CERTIFICATE_VERIFY_FAILED"):
        read_bounces("--url", dovecot_tls.url(scheme, query=query))
    assert events() == []

    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot_tls.cert))
    output = read_bounces("--url", dovecot_tls.url(scheme, query=query))

    assert events() == EVENTS
    assert "4 events recorded" in output


# --- End to end -------------------------------------------------------------------------------


def test_a_hard_bounce_read_from_the_mailbox_blocks_and_suppresses_the_subscriber(
    signup_form: SignupForm, news: Audience, owner: Any, django_capture_on_commit_callbacks: Any
) -> None:
    dana = confirmed(signup_form, [news], "dana@example.com")
    campaign = Campaign.objects.create(brand=news.brand, name="Autumn", subject="Autumn teas", html_body=HTML)
    campaign.audiences.set([news])
    send_now(campaign, owner, django_capture_on_commit_callbacks)
    sent = Delivery.objects.get(subscriber=dana, status=Delivery.Status.SENT)

    with POP3Server() as server, django_capture_on_commit_callbacks(execute=True):
        server.add(sample("postfix-5.1.1.eml", sent.pk))
        read_bounces("--url", server.url())

    dana.refresh_from_db()
    sent.refresh_from_db()
    assert dana.status == Subscriber.Status.BLOCKED
    assert sent.status == Delivery.Status.BOUNCED
    assert Suppression.objects.filter(
        brand=campaign.brand, email_hash=dana.email_hash, reason=Suppression.Reason.HARD_BOUNCE
    ).exists()
    assert ConsentEvent.objects.filter(subscriber=dana, source=ConsentEvent.Source.MAILBOX).exists()
    assert server.messages == []
