"""edgetl.models: the model registry (timm-style).

    from edgetl.models import create_model, list_models
    model = create_model("efficientnet_lite0", weights="imagenet", num_classes=12)

Importing this package does not import TensorFlow; `create_model` does.
"""

from edgetl.models._complexity import count_macs
from edgetl.models._registry import (
    BLOCK_POOL_LAYER,
    DROPOUT_LAYER,
    FEATURES_LAYER,
    FINAL_POOL_LAYER,
    INPUT_NAME,
    LOGITS_LAYER,
    PREPROCESS_LAYER,
    PROBABILITIES_LAYER,
    ModelConfig,
    create_model,
    final_pool_output,
    final_pool_width,
    get_config,
    list_models,
    offline_models,
    register_model,
    weights_available_offline,
)

__all__ = [
    "BLOCK_POOL_LAYER",
    "DROPOUT_LAYER",
    "FEATURES_LAYER",
    "FINAL_POOL_LAYER",
    "INPUT_NAME",
    "LOGITS_LAYER",
    "PREPROCESS_LAYER",
    "PROBABILITIES_LAYER",
    "ModelConfig",
    "count_macs",
    "create_model",
    "final_pool_output",
    "final_pool_width",
    "get_config",
    "list_models",
    "offline_models",
    "register_model",
    "weights_available_offline",
]
