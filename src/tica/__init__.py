"""tica: end-to-end image compression and analysis with Transformers.

    model = tica.load("tica-cifar")
    data = tica.compress(model, image)        # bytes: a real, checked bitstream
    tica.classify(model, data)                # classes, straight from the bitstream
    tica.reconstruct(model, data)             # pixels, for people
"""

from .api import (Prediction, choose_model, classify, classify_logits, compress, decompress,
                  describe, inspect, load, reconstruct)
from .bitstream import Limits
from .checkpoint import save_checkpoint
from .config import ModelConfig
from .cost import Budget
from .errors import (BitstreamError, BudgetError, CheckpointError, ConfigError, ImageError,
                     ModelMismatchError, NotUpdatedError, TicaError)
from .registry import create_model, list_models, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    "BitstreamError", "Budget", "BudgetError", "CheckpointError", "ConfigError", "ImageError",
    "Limits", "ModelConfig", "ModelMismatchError", "NotUpdatedError", "Prediction", "TicaError",
    "choose_model", "classify", "classify_logits", "compress", "create_model", "decompress",
    "describe", "inspect", "list_models", "load", "load_checkpoint", "reconstruct",
    "save_checkpoint",
]
