from .fast import train_models_fast, use_fast_path
from .module import Classifier
from .precision import native_bf16_cpu, resolve_channels_last, resolve_precision
from .pool import evaluate_accuracy, resolve_device, train_model, train_models
from .recipe import Recipe

# Raised whenever training gives different weights for the same recipe: part of every pool model's
# cache key, so models from an older trainer are retrained, never reused.
TRAINER_VERSION = 1

__all__ = ["TRAINER_VERSION", "Classifier", "Recipe", "evaluate_accuracy", "native_bf16_cpu", "resolve_channels_last",
           "resolve_precision", "resolve_device", "train_model", "train_models",
           "train_models_fast", "use_fast_path"]
