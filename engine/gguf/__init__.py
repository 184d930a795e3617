"""GGUF model files (llama.cpp's format): a strict reader, block layouts and dequantization.

The engine reads GGUF itself (struct + mmap + torch), with no numpy and nothing from the file ever
executed; the `gguf` package is only the tests' independent reference.
"""
