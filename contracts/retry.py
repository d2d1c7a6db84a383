"""The one retry policy: exponential backoff with a cap, and the rule for which failures are
worth retrying at all.

Used by alertd's delivery (``monitor.alerting.delivery``: the delay is stored in the outbox,
so a restart keeps the schedule) and by the log shipper (``monitor.logstore.shipper``: it
waits in its loop). Both retry the same way, with the same words in their logs and docs:
the first retry after ``base`` seconds, each next one after twice as long, never more than
``cap``. A jittered delay (the shipper's) spreads out clients that failed together, so a
recovering log store is not hit by all of them in the same second.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

#: the largest exponent used: 2**60 times any sane base is past every cap already
_MAX_EXPONENT = 60


@dataclass(frozen=True)
class Backoff:
    """``delay(n)`` = min(``cap``, ``base`` × ``factor`` ** (n − 1)) for retry number n ≥ 1."""

    base: float
    cap: float
    factor: float = 2.0
    #: with jitter j, a delay d becomes uniform in [d × (1 − j/2), d × (1 + j/2)]
    jitter: float = 0.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 = the first retry)."""
        exponent = min(max(0, attempt - 1), _MAX_EXPONENT)
        d = min(self.cap, self.base * self.factor ** exponent)
        if self.jitter:
            d *= 1.0 - self.jitter / 2 + (rng or random).random() * self.jitter
        return d


def transient_http_status(status: int) -> bool:
    """Whether an HTTP status is worth retrying: 429 (rate limited), 408 (timeout) and 5xx.
    Any other 4xx says the request itself is wrong, and sending it again cannot help."""
    return status in (408, 429) or status >= 500
