"""A garbage-collector probe for the node under a benchmark: every collection that stops the
process for more than 1 ms, with when it happened and its generation, written every half
second to ``$SEEKWATCH_GC_PROBE_DIR/gc-<pid>.json``.

Loaded by Python at start-up from ``PYTHONPATH`` (``relay_bench.py --gc-probe`` puts this
folder there for the node and its engine process only); the benchmark then counts the pauses
inside its measuring window. Nothing in the node knows about it.
"""
import gc
import json
import os
import threading
import time

_DIR = os.environ.get("SEEKWATCH_GC_PROBE_DIR")
if _DIR:
    _pauses: list = []
    _started: list = [0.0]

    def _on_gc(phase, info):
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        took = time.perf_counter() - _started[0]
        if took > 0.001:
            _pauses.append((time.time(), info["generation"], took))

    def _dump():
        path = os.path.join(_DIR, f"gc-{os.getpid()}.json")
        while True:
            time.sleep(0.5)
            with open(path + ".tmp", "w") as f:
                json.dump(list(_pauses), f)
            os.replace(path + ".tmp", path)

    gc.callbacks.append(_on_gc)
    threading.Thread(target=_dump, name="gc-probe", daemon=True).start()
