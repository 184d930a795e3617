"""Kernels and weight formats: packed and quantized linear layers, the compiled decode kernels, the
measured kernel choice, the quantized-weights cache."""
