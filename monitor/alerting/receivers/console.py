"""Console receiver: prints the bilingual message (for the demo and local runs). Never fails."""
from __future__ import annotations

import sys
from typing import Any

from .. import messages
from .base import Receiver


class ConsoleReceiver(Receiver):
    type = "console"

    def send(self, client: Any, payload: dict[str, Any], now: float) -> None:
        stream = sys.stderr if self.cfg.get("stream") == "stderr" else sys.stdout
        print("── seekwatch alert ──\n" + messages.plain(payload), file=stream, flush=True)
