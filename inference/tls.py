"""TLS for the node: TLS 1.3 only.

Conversations carry employees' and customers' data, so they travel with the current protocol
only: a client that offers at most TLS 1.2 is refused at the handshake.
"""
from __future__ import annotations

import ssl

import uvicorn


class Tls13Config(uvicorn.Config):
    """uvicorn's config with TLS 1.3 as the floor whenever a certificate is given."""

    def load(self) -> None:
        super().load()
        if self.ssl is not None:
            self.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
