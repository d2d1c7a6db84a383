"""Receivers, one module each: slack, dingtalk, feishu, wecom, webhook (Alertmanager format), console."""
from __future__ import annotations

from typing import Any

from .base import DeliveryError, Receiver


def build_receiver(cfg: dict[str, Any]) -> Receiver:
    t = cfg["type"]
    if t == "slack":
        from .slack import SlackReceiver as cls
    elif t == "dingtalk":
        from .dingtalk import DingTalkReceiver as cls
    elif t == "feishu":
        from .feishu import FeishuReceiver as cls
    elif t == "wecom":
        from .wecom import WeComReceiver as cls
    elif t == "webhook":
        from .webhook import WebhookReceiver as cls
    elif t == "console":
        from .console import ConsoleReceiver as cls
    else:  # pragma: no cover - the schema rejects it first
        raise ValueError(f"unknown receiver type {t!r}")
    return cls(cfg)


__all__ = ["DeliveryError", "Receiver", "build_receiver"]
