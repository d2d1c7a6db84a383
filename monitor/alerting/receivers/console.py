"""Console receiver: prints the bilingual message (for the demo and local runs). Never fails,
and has no Alertmanager counterpart."""
from __future__ import annotations

import sys
from typing import Any

from .. import messages
from .base import Receiver


class ConsoleReceiver(Receiver):
    type = "console"
    config_schema = {"properties": {"stream": {"enum": ["stdout", "stderr"]}}}

    def send(self, client: Any, payload: dict[str, Any], now: float) -> None:
        stream = sys.stderr if self.cfg.get("stream") == "stderr" else sys.stdout
        print("── seekwatch alert ──\n" + messages.plain(payload), file=stream, flush=True)

    @classmethod
    def alertmanager_note(cls, rc: dict[str, Any]) -> str:
        return f"receiver {rc['name']!r} (console) left out: it prints on alertd's own terminal"
