"""The hand-written bounce and feedback messages in ``samples/``, with a real VERP address filled in.

The samples say ``{{VERP}}`` where the report names our envelope sender; its
signature depends on SECRET_KEY, so the address is made here with
``verp.return_path`` (which needs ``BOUNCE_ADDRESS`` set: see ``BOUNCE_ADDRESS``).
"""

from __future__ import annotations

from pathlib import Path

from campaigns import verp

SAMPLES = Path(__file__).resolve().parent / "samples"
BOUNCE_ADDRESS = "bounces@mail.acme.example"


def sample(name: str, delivery_id: int = 4711) -> bytes:
    address = verp.return_path(delivery_id)
    assert address, "set settings.BOUNCE_ADDRESS first"
    return (SAMPLES / name).read_bytes().replace(b"{{VERP}}", address.encode())
