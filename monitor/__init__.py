"""Monitoring side: the alerting daemon, the log store (its launcher, setup, shipper) and the cost model."""
