"""seekwatch: monitoring stack for a self-hosted DeepSeek chat service used through NextChat."""
__version__ = "0.1.0"
