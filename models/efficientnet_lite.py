"""EfficientNet-Lite0/1/2 (placeholder: being written)."""
