"""The shared truth of seekwatch: names and shapes every part relies on.

This package imports nothing heavy (no torch, no FastAPI, no Streamlit), so the node, the
alerting daemon, the shipper and the dashboard can all read metric names, log fields and
default configs from one place: a rename happens here, once.
"""
