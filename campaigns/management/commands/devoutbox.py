"""Run the dev outbox SMTP server until interrupted."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from campaigns.outbox import start_server


class Command(BaseCommand):
    help = "Run the development SMTP outbox (aiosmtpd); mail is shown at /dev/outbox/."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.DEV_OUTBOX_PORT)

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        controller = start_server(settings.DEV_OUTBOX_DIR, host=host, port=port)
        self.stdout.write(f"Dev outbox listening on smtp://{host}:{port}, storing in {settings.DEV_OUTBOX_DIR}")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            controller.stop()
