"""Loopchat's Llama 2 engine: loop attention, KV cache, tokenizer, sampling, loading (no Qt)."""

from engine.errors import EngineError

__all__ = ["EngineError"]
