"""voxelpipe: DICOM folders to machine-learning-ready data, fast."""
from ._version import __version__
from .errors import VoxelpipeError
from .pipelines.scan import ScanResult, scan

__all__ = ["__version__", "VoxelpipeError", "ScanResult", "scan"]
