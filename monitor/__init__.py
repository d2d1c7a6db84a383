"""Monitoring side: the alerting daemon, the log store (search engine, shipper) and the cost model."""
