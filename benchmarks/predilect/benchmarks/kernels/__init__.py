"""Kernel micro-benchmarks (need a CUDA GPU)."""
