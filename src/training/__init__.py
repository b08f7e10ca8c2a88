from .fast import train_models_fast, use_fast_path
from .module import Classifier
from .precision import native_bf16_cpu, resolve_channels_last, resolve_precision
from .pool import evaluate_accuracy, resolve_device, train_model, train_models
from .recipe import Recipe

__all__ = ["Classifier", "Recipe", "evaluate_accuracy", "native_bf16_cpu", "resolve_channels_last", "resolve_precision",
           "resolve_device", "train_model", "train_models",
           "train_models_fast", "use_fast_path"]
