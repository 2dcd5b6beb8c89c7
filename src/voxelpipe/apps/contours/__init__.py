"""Masks from text polygon contours (cardiac MRI challenge layout)."""
from voxelpipe.apps.contours.pipeline import convert_contours

__all__ = ["convert_contours"]
