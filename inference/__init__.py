"""The instrumented inference node: OpenAI-compatible API, engines, metrics, session log.

torch is imported only inside ``inference.engine`` (and by ``inference.tiny_model``), so the
rest of the package is cheap to import.
"""
