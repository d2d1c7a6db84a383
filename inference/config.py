"""The node's settings, filled from ``seekwatch serve`` flags (and usable from Python).

Engine settings are the engine's own (``engine_options``, built by its plug-in in
``inference/engine/registry.py``); everything else here applies whatever the engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class NodeConfig:
    served_model_names: list[str] = field(default_factory=list)
    model_version: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    engine: str = "transformers"            # a name in inference.engine.registry
    engine_options: Any = None               # that engine's own options (its plug-in's dataclass)
    #: run the engine in a process of its own (inference/engine/process.py), away from the HTTP
    #: side's GIL; None: as the engine's plug-in prefers (the transformers engine on a GPU: yes)
    engine_process: bool | None = None
    max_batch: int = 32
    max_queue: int = 128
    #: max_tokens for requests that send none (NextChat sends none); None: the room left in the context
    default_max_tokens: int | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    api_key_file: str | None = None
    api_keys_env: str = "SEEKWATCH_API_KEYS"
    auth_probes: bool = False                 # /metrics, /healthz, /readyz, /v1/models need a key too
    tls_cert: str | None = None
    tls_key: str | None = None
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    log_dir: str = "./var/log"
    log_retention_days: int = 180            # GDPR-style retention of local session logs
    instrumentation: bool = True
    cost_config: str | None = None
    default_temperature: float = 0.7
    conversation_idle_s: float = 300.0       # a conversation ends after this long without a chat turn
    keep_alive_s: float = 5.0                # an idle client connection is closed after this long

    def model_names(self) -> list[str]:
        """Names the node answers to. NextChat asks for titles as ``deepseek-chat`` whatever
        ``deepseek-*`` model the user picked, so that alias is always in the default set."""
        if self.served_model_names:
            return list(dict.fromkeys(self.served_model_names))
        names: list[str] = []
        if self.engine_options is not None:
            from inference.engine import registry

            names += registry.get(self.engine).model_names(self.engine_options)
        names += ["deepseek-chat", "deepseek-reasoner"]
        return list(dict.fromkeys(names))
