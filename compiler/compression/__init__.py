"""Compression: post-training quantization, QAT and pruning, and the candidates and gate that choose one."""
