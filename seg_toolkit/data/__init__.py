"""Data: readers for the Kaggle layouts, folds, transforms, the demo competition."""

from .dataset import EpochSampler, SegDataset, build_transforms, collate
from .folds import load_or_make_folds, make_folds
from .io import DataError, PairSplit, read_image
from .mask_io import read_mask
from .instances import load_objects
from .sources import Sample, class_colors, class_names, load_list_samples, load_target, load_test_samples, load_train_samples

__all__ = [
    "DataError", "EpochSampler", "PairSplit", "Sample", "SegDataset", "build_transforms", "class_colors", "class_names",
    "collate", "load_list_samples", "load_objects", "load_or_make_folds", "load_target", "load_test_samples",
    "load_train_samples", "make_folds", "read_image", "read_mask",
]
