"""Explainable unsupervised multi-modal MRI registration, packaged as a MONAI bundle."""

__version__ = "0.1.0"
