from .augment import apply_query, normalize, random_crop_flip
from .datasets import DataError, ImageData, data_digest, load_dataset
from .membership import keep_matrix

__all__ = ["apply_query", "normalize", "random_crop_flip", "DataError", "ImageData", "data_digest",
           "load_dataset", "keep_matrix"]
