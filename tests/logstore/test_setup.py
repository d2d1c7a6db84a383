"""es-setup: template with every log field, cjk analysis, data streams, idempotence, the
retention policy (real engine where it can, a recording fake for ILM/ISM), one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from contracts.log_schema import load_schema
from contracts.logstore import RETENTION_POLICY, StoreClient
from monitor.logstore.setup import install, retention_policy, template_field_paths
from tests.logstore.fake_engine import FakeEngine

PY = sys.executable


def schema_leaves(schema: dict, prefix: str = "") -> set[str]:
    out = set()
    for name, spec in schema.get("properties", {}).items():
        path = prefix + name
        if spec.get("type") == "object" and "properties" in spec:
            out |= schema_leaves(spec, path + ".")
        elif spec.get("type") == "object" and "propertyNames" in spec.get("properties", {}).get("redactions", {}):
            out.add(path)
        elif spec.get("type") == "object" and "additionalProperties" in spec:
            # pii.redactions: one integer per PII kind
            for kind in spec.get("propertyNames", {}).get("enum", []):
                out.add(f"{path}.{kind}")
        elif spec.get("type") == "object":
            out.add(path + ".*")
        else:
            out.add(path)
    return out


def seekwatch(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "seekwatch", *args], capture_output=True, text=True, timeout=timeout)


def mapped_paths(props: dict, prefix: str = "") -> dict[str, dict]:
    out = {}
    for name, spec in props.items():
        if "properties" in spec:
            out.update(mapped_paths(spec["properties"], prefix + name + "."))
        else:
            out[prefix + name] = spec
    return out


def test_template_maps_every_schema_field():
    mapped = template_field_paths()
    session = schema_leaves(load_schema("session"))
    feedback = schema_leaves(load_schema("feedback")) - {"pii.redactions.*"}
    assert session - mapped == set()
    assert feedback - mapped - {"pii.redactions"} == set()


def test_new_index_gets_the_template(store):
    # A rollover makes a brand-new backing index: it must carry the template's mappings.
    before = store.backing_indices("seekwatch-feedback")
    store.request("POST", "/seekwatch-feedback/_rollover")
    after = store.backing_indices("seekwatch-feedback")
    new = [i for i in after if i not in before]
    assert len(new) == 1
    idx = new[0]
    mapping = store.request("GET", f"/{idx}/_mapping")[idx]["mappings"]
    fields = mapped_paths(mapping["properties"])
    assert fields["prompt"]["analyzer"] == "cjk" and fields["response"]["analyzer"] == "cjk"
    assert fields["session_id"]["type"] == "keyword" and fields["request_id"]["type"] == "keyword"
    assert fields["latency_ms"]["type"] == "double" and fields["@timestamp"]["type"] == "date"
    assert fields["gen_ai.usage.input_tokens"]["type"] == "long"
    assert set(template_field_paths()) <= set(fields)
    settings = store.request("GET", f"/{idx}/_settings")[idx]["settings"]["index"]
    assert settings["default_pipeline"] == "seekwatch-logs"


def test_cjk_analyzer_on_prompt(store):
    idx = store.backing_indices("seekwatch-sessions")[-1]  # _analyze wants an index, not a stream
    tokens = store.request("POST", f"/{idx}/_analyze",
                           {"field": "prompt", "text": "连续批处理的原理"})["tokens"]
    assert [t["token"] for t in tokens] == ["连续", "续批", "批处", "处理", "理的", "的原", "原理"]


def test_es_setup_cli_is_idempotent(log_store_url):
    first = seekwatch("es-setup", "--url", log_store_url)  # the fixture already ran it once
    assert first.returncode == 0, first.stderr
    lines = first.stdout.strip().splitlines()
    assert lines[0].startswith("log store: opensearch 2.19")
    assert all(l.endswith(("unchanged", "skipped: ISM unavailable")) for l in lines[1:]), lines
    assert "retention is NOT active" in first.stderr  # said plainly, not hidden


def test_es_setup_require_retention_fails_in_one_line(log_store_url):
    proc = seekwatch("es-setup", "--url", log_store_url, "--require-retention")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "ISM" in proc.stderr


@pytest.mark.parametrize("args,code", [
    (["es-setup", "--url", "ftp://x"], 2),
    (["es-setup", "--url", "http://127.0.0.1:9", "--retention-days", "0"], 2),
    (["es-setup", "--url", "http://127.0.0.1:9", "--ca-certs", "/nonexistent.pem"], 2),
    (["es-setup", "--url", "http://127.0.0.1:9"], 1),
    (["es-setup", "--bogus"], 2),
])
def test_es_setup_bad_input_one_line(args, code):
    proc = seekwatch(*args)
    assert proc.returncode == code, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_retention_policy_bodies_are_180_days():
    ilm = retention_policy("ilm")["policy"]
    assert ilm["phases"]["delete"]["min_age"] == "180d"
    assert ilm["phases"]["delete"]["actions"] == {"delete": {}}
    assert ilm["phases"]["hot"]["actions"]["rollover"]["max_age"] == "1d"
    ism = retention_policy("ism")["policy"]
    states = {s["name"]: s for s in ism["states"]}
    assert states["hot"]["transitions"] == [{"state_name": "delete", "conditions": {"min_index_age": "180d"}}]
    assert states["delete"]["actions"] == [{"delete": {}}]
    assert ism["ism_template"][0]["index_patterns"] == [".ds-seekwatch-*"]
    assert retention_policy("ilm", 30)["policy"]["phases"]["delete"]["min_age"] == "30d"


def test_elasticsearch_gets_ilm_attached_by_template_and_explain_reads_it():
    with FakeEngine("elasticsearch", "8.19.0") as fake, StoreClient(fake.url) as client:
        assert client.info().retention_api == "ilm"
        report = install(client)
        assert ("PUT", f"/_ilm/policy/{RETENTION_POLICY}") in fake.writes()
        assert not any("_ism" in p for _m, p in fake.writes())
        assert fake.ilm[RETENTION_POLICY]["phases"]["delete"]["min_age"] == "180d"
        tmpl = fake.templates["seekwatch-logs"]
        assert tmpl["template"]["settings"]["index"]["lifecycle"] == {"name": RETENTION_POLICY}
        assert not report.warnings
        explain = client.explain_retention(".ds-seekwatch-sessions-000001")
        assert explain["policy"] == RETENTION_POLICY
        # idempotent: the second run writes nothing
        n = len(fake.writes())
        again = install(client)
        assert len(fake.writes()) == n and not again.changed


def test_opensearch_with_ism_gets_policy_with_template_and_explain_reads_it():
    with FakeEngine("opensearch", "2.19.6") as fake, StoreClient(fake.url) as client:
        assert client.info().retention_api == "ism"
        install(client)
        assert ("PUT", f"/_plugins/_ism/policies/{RETENTION_POLICY}") in fake.writes()
        assert not any("_ilm" in p for _m, p in fake.writes())
        assert "lifecycle" not in fake.templates["seekwatch-logs"]["template"]["settings"]["index"]
        assert fake.ism[RETENTION_POLICY]["policy"]["ism_template"][0]["index_patterns"] == [".ds-seekwatch-*"]
        assert client.explain_retention(".ds-seekwatch-sessions-000001")["policy"] == RETENTION_POLICY
        n = len(fake.writes())
        assert not install(client).changed and len(fake.writes()) == n
        # a changed retention period updates the policy with ISM's concurrency parameters
        report = install(client, retention_days=90)
        assert ("retention policy seekwatch-retention (ISM, delete after 90d)", "updated") in report.actions
        put = [q for m, p, q, _b in fake.requests if m == "PUT" and "_ism" in p][-1]
        assert put["if_seq_no"] == ["0"] and put["if_primary_term"] == ["1"]
