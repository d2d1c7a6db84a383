"""schemathesis hooks for tests/reliability/test_schemathesis.py (loaded through
``SCHEMATHESIS_HOOKS``): every error response is OpenAI's error JSON."""
from __future__ import annotations

import json

import schemathesis


@schemathesis.check
def openai_error_shape(ctx, response, case):
    """A 4xx/5xx body is ``{"error": {"message": str, "type": str, "code": ...}}``."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from None
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or not {"message", "type", "code"} <= set(err):
        raise AssertionError(f"{response.status_code} body is not OpenAI's error shape: {body!r:.300}")
    if not (isinstance(err["message"], str) and err["message"].strip() and isinstance(err["type"], str) and err["type"]):
        raise AssertionError(f"empty message or type: {err!r:.300}")
    return None
