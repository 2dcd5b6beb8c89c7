"""Training-time readers: batches of slices, patches or image/mask pairs from converted outputs.

- :class:`PairReader`  — the ``<patient_key>/<NNNN>.npz`` pairs of the contours command; one sample per file.
- :class:`SliceReader` — every 2-D slice (axis 0) of Zarr volumes; one sample per slice.
- :class:`PatchReader` — random 3-D patches of Zarr volumes, ``patches_per_volume`` samples per volume and
  epoch, optionally centred on a foreground voxel of the masks with probability ``foreground``.

Iterating a reader yields one dict of numpy arrays per batch (see :class:`BatchReader`). The order is
reproducible from the seed, and batches are loaded by a background thread (named ``PREFETCH_THREAD_NAME``) into
a bounded queue; the thread stops when the consumer closes the iterator or stops early.

``TorchDataset(reader)`` / ``reader.torch()`` wrap a reader as a ``torch.utils.data.IterableDataset`` of
batches, ``SampleDataset(reader)`` / ``reader.dataset()`` as a map-style ``torch.utils.data.Dataset`` of single
samples (torch is imported only then).
"""
from voxelpipe.reader.base import BatchReader
from voxelpipe.reader.dataset import sample_dataset_class, torch_dataset_class
from voxelpipe.reader.pairs import PairReader, pair_files
from voxelpipe.reader.patches import PatchReader
from voxelpipe.reader.prefetch import PREFETCH_THREAD_NAME
from voxelpipe.reader.slices import SliceReader
from voxelpipe.reader.volumes import volume_paths

__all__ = ["BatchReader", "PREFETCH_THREAD_NAME", "PairReader", "PatchReader", "SliceReader",
           "pair_files", "volume_paths"]


def __getattr__(name: str):
    # ``TorchDataset`` and ``SampleDataset`` are built on first use so that torch stays optional
    if name == "TorchDataset":
        return torch_dataset_class()
    if name == "SampleDataset":
        return sample_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
