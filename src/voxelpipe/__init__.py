"""voxelpipe: DICOM folders to machine-learning-ready data, fast.

Library calls: ``scan``, ``convert``, ``aggregate``, ``open_volume``, ``save_volume``, ``resample_to``, ``project``,
``Mask``/``write_masks``/``open_masks``, ``write_seg`` (masks to a DICOM SEG), ``fill_polygons``, ``SqliteStore``,
``export_nnunet`` (each loads its module on first use, so ``import voxelpipe`` stays light); training batches come
from ``voxelpipe.reader``; ``voxelpipe.ops.reorient.reorient`` and ``voxelpipe.ops.resample.resample`` live in
modules of the same name.
"""
from voxelpipe._version import __version__
from voxelpipe.core.errors import VoxelpipeError

_LAZY = {
    "scan": ("voxelpipe.pipelines.scan", "scan"),
    "ScanResult": ("voxelpipe.pipelines.scan", "ScanResult"),
    "convert": ("voxelpipe.pipelines.convert", "convert"),
    "aggregate": ("voxelpipe.pipelines.convert", "aggregate"),
    "open_volume": ("voxelpipe.stores.volumes", "open_volume"),
    "Volume": ("voxelpipe.core.volume", "Volume"),
    "save_volume": ("voxelpipe.stores.volumes", "save_volume"),
    "resample_to": ("voxelpipe.ops.resample", "resample_to"),
    "project": ("voxelpipe.ops.projection", "project"),
    "Mask": ("voxelpipe.core.masks", "Mask"),
    "write_masks": ("voxelpipe.stores.masks", "write_masks"),
    "open_masks": ("voxelpipe.stores.masks", "open_masks"),
    "write_seg": ("voxelpipe.stores.dicom_seg", "write_seg"),
    "fill_polygons": ("voxelpipe.ops.polygon", "fill_polygons"),
    "SqliteStore": ("voxelpipe.stores.sqlite_store", "SqliteStore"),
    "export_nnunet": ("voxelpipe.apps.nnunet.export", "export_nnunet"),
}

__all__ = ["__version__", "VoxelpipeError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'voxelpipe' has no attribute {name!r}")
