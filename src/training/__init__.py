from .fast import train_models_fast, use_fast_path
from .module import Classifier
from .pool import evaluate_accuracy, resolve_device, train_model, train_models
from .recipe import Recipe

__all__ = ["Classifier", "Recipe", "evaluate_accuracy", "resolve_device", "train_model", "train_models",
           "train_models_fast", "use_fast_path"]
