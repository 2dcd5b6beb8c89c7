"""Training-time readers: batches of slices, patches or image/mask pairs from converted outputs."""
from voxelpipe.reader.batches import BatchReader, PairReader, PatchReader, SliceReader, pair_files, volume_paths

__all__ = ["BatchReader", "PairReader", "PatchReader", "SliceReader", "pair_files", "volume_paths"]


def __getattr__(name: str):
    from voxelpipe.reader import batches

    return getattr(batches, name)
