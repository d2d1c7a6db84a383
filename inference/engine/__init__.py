"""Generation engines behind the node. torch is imported only in this package.

``base`` holds the interface the serving layer talks to; ``transformers_cb`` runs a model
in-process with continuous batching; ``upstream`` streams through to any OpenAI-compatible
server (vLLM, SGLang, the DeepSeek API).
"""
