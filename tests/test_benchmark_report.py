"""benchmarks/report.py: a re-run replaces its own block in the docs and nothing else."""
from __future__ import annotations

from benchmarks.report import write_block


def test_first_run_appends_under_a_heading_and_a_rerun_replaces_only_its_block(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- other -->\nkept\n<!-- /other -->\n", "utf-8")
    write_block("mine", "Mine", "| a |\n| 1 |", doc)
    assert doc.read_text("utf-8") == ("# Benchmarks\n\n<!-- other -->\nkept\n<!-- /other -->\n\n"
                                      "## Mine\n\n<!-- mine -->\n| a |\n| 1 |\n<!-- /mine -->\n")
    write_block("mine", "Mine", "| a |\n| 2 |", doc)
    text = doc.read_text("utf-8")
    assert text.count("## Mine") == 1 and "| 2 |" in text and "| 1 |" not in text and "kept" in text
