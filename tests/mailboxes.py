"""Real mailbox servers for the bounce-mailbox reader's tests.

``POP3Server``: a small RFC 1939 server in a thread (USER, PASS, CAPA, STAT,
LIST, UIDL, RETR, DELE, RSET, NOOP, QUIT) over one in-memory maildrop; DELE
takes effect at QUIT, as the RFC says, and it can be told to drop the
connection at QUIT instead, like a network failure at the worst moment.

``Dovecot``: Debian's Dovecot IMAP server (``apt-get install dovecot-imapd``)
on a free port with a throwaway configuration, mail and logs under a temporary
folder; optionally with TLS (imaps and STARTTLS) on a self-signed certificate.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.mailserver import free_port

DOVECOT = Path("/usr/sbin/dovecot")
USER = "bounces"
PASSWORD = "s3cret/p@ss#1"  # characters a URL must percent-encode (no ":", Dovecot's passwd-file separator)


def crlf(raw: bytes) -> bytes:
    """Mail on the wire: CRLF line ends, the last line ended too."""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


# --- POP3 -----------------------------------------------------------------------------------


class _POP3Session(socketserver.StreamRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        pop = self.server.pop3
        user = ""
        marked: set[int] | None = None  # None until authenticated (AUTHORIZATION state)
        drop: list[tuple[str, bytes]] = []
        self._send("+OK POP3 test server ready")
        while line := self.rfile.readline():
            command, _, argument = line.decode(errors="replace").strip().partition(" ")
            command = command.upper()
            pop.commands.append(command)
            if command == "CAPA":
                self._send("+OK", "USER", "UIDL", ".")
            elif command == "QUIT":
                if pop.drop_at_quit:
                    return  # gone without a word: the server must delete nothing
                if marked is not None:
                    pop.expunge({drop[i][0] for i in marked})
                self._send("+OK bye")
                return
            elif marked is None:
                if command == "USER":
                    user = argument
                    self._send("+OK")
                elif command == "PASS" and (user, argument) == (pop.user, pop.password):
                    drop, marked = pop.snapshot(), set()
                    self._send(f"+OK {len(drop)} messages")
                elif command == "PASS":
                    self._send("-ERR [AUTH] Authentication failed")
                else:
                    self._send("-ERR log in first")
            else:
                self._transaction(command, argument, drop, marked)

    def _transaction(self, command: str, argument: str, drop: list[tuple[str, bytes]], marked: set[int]) -> None:
        live = [i for i in range(len(drop)) if i not in marked]
        index = int(argument) - 1 if argument.isdigit() else -1
        needs_message = command in {"RETR", "DELE"} or (command in {"LIST", "UIDL"} and argument)
        if needs_message and index not in live:
            self._send("-ERR no such message")
            return
        if command == "STAT":
            self._send(f"+OK {len(live)} {sum(len(drop[i][1]) for i in live)}")
        elif command == "LIST" and argument:
            self._send(f"+OK {index + 1} {len(drop[index][1])}")
        elif command == "LIST":
            self._send("+OK", *(f"{i + 1} {len(drop[i][1])}" for i in live), ".")
        elif command == "UIDL" and argument:
            self._send(f"+OK {index + 1} {drop[index][0]}")
        elif command == "UIDL":
            self._send("+OK", *(f"{i + 1} {drop[i][0]}" for i in live), ".")
        elif command == "RETR":
            body = b"".join(b"." + ln if ln.startswith(b".") else ln for ln in drop[index][1].splitlines(keepends=True))
            self.wfile.write(f"+OK {len(drop[index][1])} octets\r\n".encode() + body + b".\r\n")
        elif command == "DELE":
            marked.add(index)
            self._send("+OK deleted")
        elif command == "RSET":
            marked.clear()
            self._send("+OK")
        elif command == "NOOP":
            self._send("+OK")
        else:
            self._send("-ERR unknown command")

    def _send(self, *lines: str) -> None:
        self.wfile.write("".join(f"{line}\r\n" for line in lines).encode())


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    pop3: POP3Server


class POP3Server:
    def __init__(self, *, user: str = USER, password: str = PASSWORD, port: int = 0) -> None:
        self.user = user
        self.password = password
        self.drop_at_quit = False
        self.commands: list[str] = []
        self._messages: list[tuple[str, bytes]] = []
        self._next_uid = 1
        self._lock = threading.Lock()
        self._server = _TCPServer(("127.0.0.1", port), _POP3Session)
        self._server.pop3 = self
        self.port = int(self._server.server_address[1])

    def url(self, scheme: str = "pop3", password: str | None = None) -> str:
        return f"{scheme}://{self.user}:{quote(password or self.password, safe='')}@127.0.0.1:{self.port}"

    def add(self, raw: bytes) -> None:
        with self._lock:
            self._messages.append((f"uid{self._next_uid}", crlf(raw)))
            self._next_uid += 1

    @property
    def messages(self) -> list[bytes]:
        with self._lock:
            return [raw for _, raw in self._messages]

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._messages)

    def expunge(self, uids: set[str]) -> None:
        with self._lock:
            self._messages = [(uid, raw) for uid, raw in self._messages if uid not in uids]

    def __enter__(self) -> POP3Server:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- IMAP (Dovecot) ------------------------------------------------------------------------

_DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = assent-test-{port}
protocols = imap
listen = 127.0.0.1
ssl = {ssl}
{ssl_files}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = 1
default_internal_user = {internal_user}
default_login_user = {login_user}
mail_location = maildir:{root}/mail/%u
{capability}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  chroot =
}}
"""


class Dovecot:
    """One Dovecot master process (``dovecot -F``) and its throwaway configuration."""

    def __init__(self, *, user: str = USER, password: str = PASSWORD, tls: bool = False, capability: str = "") -> None:
        self.user = user
        self.password = password
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        # Short: Dovecot's unix sockets live under it, and socket paths are limited to ~100 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.cert = self.root / "cert.pem"
        self._tls = tls
        self._capability = capability
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, scheme: str = "imap", folder: str = "INBOX", query: str = "", password: str | None = None) -> str:
        port = self.tls_port if scheme == "imaps" else self.port
        url = f"{scheme}://{self.user}:{quote(password or self.password, safe='')}@127.0.0.1:{port}/{folder}"
        return f"{url}?{query}" if query else url

    def __enter__(self) -> Dovecot:
        self._configure()
        self._process = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(self.root / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @contextlib.contextmanager
    def client(self, folder: str = "INBOX") -> Iterator[imaplib.IMAP4]:
        """A logged-in imaplib client with the folder selected (created if missing)."""
        conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        try:
            conn.login(self.user, self.password)
            conn.create(f'"{folder}"')
            conn.select(f'"{folder}"')
            yield conn
        finally:
            conn.logout()

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        with self.client(folder) as conn:
            status, data = conn.append(f'"{folder}"', "", None, crlf(raw))
            assert status == "OK", data

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        """The folder's messages (not flagged \\Deleted), in order."""
        with self.client(folder) as conn:
            _, data = conn.uid("SEARCH", "UNDELETED")
            found: list[bytes] = []
            for uid in data[0].split():
                _, fetched = conn.uid("FETCH", uid, "(BODY.PEEK[])")
                found += [item[1] for item in fetched if isinstance(item, tuple)]
            return found

    def _configure(self) -> None:
        if os.geteuid() == 0:
            # Dovecot will not touch mail as root: the mail belongs to its own user.
            owner = pwd.getpwnam("dovecot")
            internal_user, login_user = "dovecot", "dovenull"
        else:
            owner = pwd.getpwuid(os.geteuid())
            internal_user = login_user = owner.pw_name
        self.root.chmod(0o755)
        mail = self.root / "mail"
        mail.mkdir()
        os.chown(mail, owner.pw_uid, owner.pw_gid)
        (self.root / "passwd").write_text(f"{self.user}:{{PLAIN}}{self.password}\n")
        ssl_files = ""
        if self._tls:
            _self_signed_certificate(self.cert, self.root / "key.pem")
            ssl_files = f"ssl_cert = <{self.cert}\nssl_key = <{self.root / 'key.pem'}"
        config = _DOVECOT_CONF.format(
            root=self.root,
            port=self.port,
            tls_port=self.tls_port,
            ssl="yes" if self._tls else "no",
            ssl_files=ssl_files,
            internal_user=internal_user,
            login_user=login_user,
            uid=owner.pw_uid,
            gid=owner.pw_gid,
            capability=f"imap_capability = {self._capability}" if self._capability else "",
        )
        (self.root / "dovecot.conf").write_text(config)

    def _wait_until_ready(self, timeout: float = 15) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"dovecot exited ({self._process.returncode}):\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                if sock.recv(100).startswith(b"* OK"):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"dovecot did not answer on port {self.port} in {timeout}s:\n{self.log()}")


def _self_signed_certificate(cert: Path, key: Path) -> None:
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )


def dovecot_missing(*, tls: bool = False) -> str:
    """Why the Dovecot tests cannot run here, or ''."""
    if not DOVECOT.exists():
        return f"{DOVECOT} is not installed (apt-get install dovecot-imapd)"
    if tls and shutil.which("openssl") is None:
        return "openssl is not installed: the TLS tests make a certificate with it"
    return ""


def require_dovecot(*, tls: bool = False) -> None:
    """Skip, saying why, where Dovecot is missing; fail instead under CI, which installs it (``.ci/run``).

    ``make test`` installs it too when it runs as root, as it does Chromium.
    """
    reason = dovecot_missing(tls=tls)
    if reason and os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{reason}; CI must run the IMAP tests")
    if reason:
        pytest.skip(reason)
