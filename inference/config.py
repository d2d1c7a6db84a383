"""The node's settings, filled from ``seekwatch serve`` flags (and usable from Python)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NodeConfig:
    model: str | None = None
    served_model_names: list[str] = field(default_factory=list)
    model_version: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    engine: str = "transformers"            # transformers | upstream
    upstream_url: str | None = None
    upstream_model: str | None = None
    upstream_api_key_env: str = "SEEKWATCH_UPSTREAM_API_KEY"
    upstream_ca_bundle: str | None = None    # verify the upstream's certificate against this CA file
    device: str = "auto"
    dtype: str = "auto"
    max_batch: int = 32
    max_queue: int = 128
    max_model_len: int | None = None
    #: max_tokens for requests that send none (NextChat sends none); None: the room left in the context
    default_max_tokens: int | None = None
    kv_cache_tokens: int | None = None       # padded KV slots; default: from free GPU memory
    max_body_bytes: int = 4 * 1024 * 1024
    api_key_file: str | None = None
    api_keys_env: str = "SEEKWATCH_API_KEYS"
    auth_probes: bool = False                 # /metrics, /healthz, /readyz, /v1/models need a key too
    tls_cert: str | None = None
    tls_key: str | None = None
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    log_dir: str = "./var/log"
    log_retention_days: int = 180            # the seed's GDPR-style retention (section 5.1)
    instrumentation: bool = True
    cost_config: str | None = None
    default_temperature: float = 0.7

    def model_names(self) -> list[str]:
        """Names the node answers to. NextChat asks for titles as ``deepseek-chat`` whatever
        ``deepseek-*`` model the user picked, so that alias is always in the default set."""
        if self.served_model_names:
            return list(dict.fromkeys(self.served_model_names))
        names = []
        if self.model:
            from pathlib import Path
            names.append(Path(self.model).name)
        if self.upstream_model:
            names.append(self.upstream_model)
        names += ["deepseek-chat", "deepseek-reasoner"]
        return list(dict.fromkeys(names))
