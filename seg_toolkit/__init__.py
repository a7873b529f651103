"""seg_toolkit: K-fold semantic segmentation for Kaggle-style competitions."""

__version__ = "0.1.0"
