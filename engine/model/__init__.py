"""The model: its shape (ModelArgs), the transformer with loop attention, the KV cache. No kernel
code."""
