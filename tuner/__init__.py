"""tuner: a hyperparameter-search service for focal loss (gamma, alpha) on imbalanced images."""

__version__ = "0.1.0"
