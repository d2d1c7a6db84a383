"""alertd: the threshold matrix evaluated over the nodes' metrics, notified to chat ops.

Modules: config (YAML + JSON Schema), scrape / promql (sources), rules, state (SQLite state
machine, silences, outbox), delivery (retries), receivers/ (one per chat tool), export
(Prometheus rules, Alertmanager config), daemon and cli. See docs/alerts.md.
"""
