from .module import Classifier
from .pool import evaluate_accuracy, train_model

__all__ = ["Classifier", "evaluate_accuracy", "train_model"]
