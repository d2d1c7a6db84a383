"""alertd's own metrics (served on ``metrics_listen``), including the scaling recommendation series."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "seekwatch_alertd_"


class AlertdMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.evaluations = Counter(PREFIX + "evaluations_total", "Evaluation cycles run", ["outcome"], registry=r)
        self.cycle = Histogram(PREFIX + "evaluation_seconds", "Duration of one evaluation cycle", registry=r,
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.alerts = Gauge(PREFIX + "alerts", "Alerts by state", ["state"], registry=r)
        self.notifications = Counter(PREFIX + "notifications_total",
                                     "Notification delivery attempts by receiver and outcome (sent, retry, failed, silenced)",
                                     ["receiver", "outcome"], registry=r)
        self.outbox_pending = Gauge(PREFIX + "outbox_pending", "Notifications waiting for delivery", registry=r)
        self.node_up = Gauge(PREFIX + "node_up", "1 when the node gave data in the last evaluation", ["node"], registry=r)
        self.load = Gauge(PREFIX + "fleet_load_ratio",
                          "Fleet load: average requests_running / capacity over the scaling window", registry=r)
        self.recommendation = Gauge(PREFIX + "scaling_recommendation_instances",
                                    "Scaling rule: +N add instances, -N remove, 0 hold", registry=r)
        for s in ("pending", "firing"):
            self.alerts.labels(s)
