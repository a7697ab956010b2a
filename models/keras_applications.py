"""ResNet50 and MobileNetV3 (placeholder: being written)."""
