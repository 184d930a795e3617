"""Loopchat's Llama 2 engine: loop attention, KV cache, tokenizer, sampling, loading (no Qt)."""

import warnings

from engine.errors import EngineError

# torch warns at import when NumPy is absent; the engine never converts to NumPy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

__all__ = ["EngineError"]
