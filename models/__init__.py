"""edgetl.models: the model registry (timm-style).

    from edgetl.models import create_model, list_models
    model = create_model("efficientnet_lite0", weights="imagenet", num_classes=12)

Importing this package does not import TensorFlow; `create_model` does.
"""

from edgetl.models._complexity import count_macs
from edgetl.models._registry import (
    DROPOUT_LAYER,
    FEATURES_LAYER,
    INPUT_NAME,
    LOGITS_LAYER,
    PREPROCESS_LAYER,
    PROBABILITIES_LAYER,
    ModelConfig,
    create_model,
    get_config,
    list_models,
    offline_models,
    register_model,
    weights_available_offline,
)

__all__ = [
    "DROPOUT_LAYER",
    "FEATURES_LAYER",
    "INPUT_NAME",
    "LOGITS_LAYER",
    "PREPROCESS_LAYER",
    "PROBABILITIES_LAYER",
    "ModelConfig",
    "count_macs",
    "create_model",
    "get_config",
    "list_models",
    "offline_models",
    "register_model",
    "weights_available_offline",
]
