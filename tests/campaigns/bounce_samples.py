"""The hand-written bounce and feedback messages in ``samples/``, with real VERP addresses and tokens filled in.

The samples say ``{{VERP}}`` where the report names our envelope sender, and
``{{DELIVERY_TOKEN:106}}`` where the returned original carries our
``X-Assent-Delivery`` header for delivery 106. Both are signed with SECRET_KEY,
so they are made here: the address with ``verp.return_path`` (which needs
``BOUNCE_ADDRESS`` set: see ``BOUNCE_ADDRESS``), the header with ``verp.token``.
"""

from __future__ import annotations

import re
from pathlib import Path

from campaigns import verp

SAMPLES = Path(__file__).resolve().parent / "samples"
BOUNCE_ADDRESS = "bounces@mail.acme.example"
_DELIVERY_TOKEN = re.compile(rb"\{\{DELIVERY_TOKEN:(\d+)\}\}")


def sample(name: str, delivery_id: int = 4711) -> bytes:
    address = verp.return_path(delivery_id)
    assert address, "set settings.BOUNCE_ADDRESS first"
    raw = (SAMPLES / name).read_bytes().replace(b"{{VERP}}", address.encode())
    return _DELIVERY_TOKEN.sub(lambda m: verp.token(int(m[1])).encode(), raw)
