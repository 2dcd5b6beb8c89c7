"""Batches of one shape: cutting a reading order into batches whose samples share a group (an image shape)."""
from __future__ import annotations

import numpy as np


def group_batches(order: np.ndarray, groups: np.ndarray, batch_size: int, drop_last: bool = False
                  ) -> list[np.ndarray]:
    """Batches of one group each, cut from ``order``.

    Walks ``order`` and appends each item to its group's open batch; a batch is closed when it holds
    ``batch_size`` items. The groups' last, short batches follow in the order their groups first appeared
    (or are dropped with ``drop_last``). Every item of ``order`` is in exactly one batch (but for dropped ones),
    and items keep their relative order.

    Args:
        order: (n,) items (sample numbers or dataset positions) in reading order.
        groups: Group of each item, indexed by the item itself (``groups[order[i]]``).
        batch_size: Items per batch (at least 1).
        drop_last: Leave out each group's last, short batch.

    Returns:
        int64 arrays of items.
    """
    open_batches: dict[int, list[int]] = {}
    batches: list[np.ndarray] = []
    for item in np.asarray(order).tolist():
        members = open_batches.setdefault(int(groups[item]), [])
        members.append(item)
        if len(members) == batch_size:
            batches.append(np.array(members, np.int64))
            members.clear()
    if not drop_last:
        batches.extend(np.array(m, np.int64) for m in open_batches.values() if m)
    return batches


def shape_groups(shapes: list[tuple[int, ...]]) -> np.ndarray:
    """(len(shapes),) int64 group number of each shape (first appearance order)."""
    numbers: dict[tuple[int, ...], int] = {}
    return np.array([numbers.setdefault(tuple(s), len(numbers)) for s in shapes], np.int64)


__all__ = ["group_batches", "shape_groups"]
