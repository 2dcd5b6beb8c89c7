"""voxelpipe: DICOM folders to machine-learning-ready data, fast.

Library calls: ``scan``, ``convert``, ``aggregate``, ``open_volume``, ``save_volume``, ``resample_to``, ``project``,
``Mask``/``write_masks``/``open_masks``, ``fill_polygons`` (heavier modules load on first use); training batches come
from ``voxelpipe.reader``; ``voxelpipe.reorient.reorient`` and ``voxelpipe.resample.resample`` live in
modules of the same name.
"""
from ._version import __version__
from .errors import VoxelpipeError
from .pipelines.scan import ScanResult, scan

_LAZY = {
    "convert": ("voxelpipe.pipelines.convert", "convert"),
    "aggregate": ("voxelpipe.pipelines.convert", "aggregate"),
    "open_volume": ("voxelpipe.volume", "open_volume"),
    "Volume": ("voxelpipe.volume", "Volume"),
    "save_volume": ("voxelpipe.volume", "save_volume"),
    "resample_to": ("voxelpipe.resample", "resample_to"),
    "project": ("voxelpipe.projection", "project"),
    "Mask": ("voxelpipe.masks", "Mask"),
    "write_masks": ("voxelpipe.masks", "write_masks"),
    "open_masks": ("voxelpipe.masks", "open_masks"),
    "fill_polygons": ("voxelpipe.polygon", "fill_polygons"),
}

__all__ = ["__version__", "VoxelpipeError", "ScanResult", "scan", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'voxelpipe' has no attribute {name!r}")
