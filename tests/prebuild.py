"""Build, once per machine, the two things the suite makes that take minutes: the tiny
model trained on the support corpus (3-5 minutes on 2 cores) and the NextChat build (about
3 minutes). ``make test`` runs this before pytest, so the first run on a fresh machine does
not spend a test's time limit (pytest-timeout, 300 s) on them; both are cached, and a second
run takes a second or two.

The fixtures still build on demand (``tests/fixtures/node.py``, ``tests/nextchat/build.py``),
for ``pytest`` run on a part of the suite. A NextChat build that cannot happen here (node or
npm missing) is reported and the run goes on: the NextChat tests then fail with the same
one-line reason."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seekwatch-prebuild-") as tmp:
        # trains into ~/.cache/seekwatch/models unless this corpus and code were trained before
        subprocess.run([sys.executable, "-m", "seekwatch", "make-tiny-model", str(Path(tmp) / "support")],
                       check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    sys.path.insert(0, str(ROOT))
    from tests.nextchat.build import BuildError, build

    try:
        build()
    except BuildError as exc:
        print(f"prebuild: NextChat not built: {exc}", file=sys.stderr)
    print(f"prebuild: trained tiny model and NextChat build ready ({time.monotonic() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
