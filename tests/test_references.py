"""Text states facts instead of pointing at documents users do not have: no docstring, help
text, caption, config comment or doc page cites the project's internal design notes
("DESIGN.md", "the seed", "seed table 5.2", "seed section 2.1", …)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"DESIGN\.md|\bthe seed\b|\bseed's\b|\bseed (table|section|§)|\bseed \d+\.\d|§\s*\d",
                      re.IGNORECASE)
#: where users read text: docs, code, configs, manifests (not vendored material)
SCANNED = ("README.md", "docs", "contracts", "inference", "monitor", "dashboards", "seekwatch", "deploy",
           "benchmarks", "scripts", "tests", "logstash")


def test_no_text_cites_internal_documents():
    files = subprocess.run(["git", "ls-files", "--", *SCANNED], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    hits = []
    for name in files:
        path = REPO / name
        if name == "tests/test_references.py" or not path.is_file() or path.suffix in (".png", ".jar", ".ico"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for no, line in enumerate(text.splitlines(), 1):
            if CITATION.search(line):
                hits.append(f"{name}:{no}: {line.strip()[:120]}")
    assert not hits, "text citing documents users do not have:\n" + "\n".join(hits)
