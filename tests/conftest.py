"""Suite-wide fixtures. Each fixture module under tests/fixtures/ belongs to one part:
node.py (tiny model, running node), log_store.py (one OpenSearch per session),
prometheus.py (real Prometheus/Alertmanager on loopback), browser.py (headless Chromium)."""
pytest_plugins = [
    "tests.fixtures.node",
    "tests.fixtures.log_store",
    "tests.fixtures.prometheus",
    "tests.fixtures.browser",
]
