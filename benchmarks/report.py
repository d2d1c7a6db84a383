"""Writing a benchmark's table into the docs: between its ``<!-- NAME -->`` and
``<!-- /NAME -->`` markers, so a re-run replaces its own figures and nothing else; a first
run appends the block under a heading of its own."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


def write_block(name: str, heading: str, text: str, path: Path = BENCHMARKS_MD) -> None:
    """Put ``text`` between the markers named ``name`` in ``path`` (appended under
    ``## heading`` when the markers are not there yet)."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    doc = path.read_text("utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + f"\n\n## {heading}\n\n{block}\n"
    path.write_text(doc, "utf-8")
