"""The shipper's one fatal error (its own module: the checkpoint store, the bulk sender and
the shipper all raise it)."""
from __future__ import annotations


class ShipperError(RuntimeError):
    """Fatal: configuration the shipper cannot work around (bad credentials, state dir
    locked by another shipper, an unreadable checkpoint)."""
