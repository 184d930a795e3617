"""Kernels and weight formats: packed and quantized linear layers, the compiled decode kernels, the
measured kernel choice, the decode-time thread governor, the quantized-weights cache."""
