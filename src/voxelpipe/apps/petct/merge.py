"""``merge``: several subject files (HDF5 or Zarr, see ``voxelpipe.stores.subject_store``) into one.

Every complete subject of every input is copied (compressed chunks as they are between files of the same kind,
read and rewritten across kinds; incomplete leftovers of interrupted writes are left out and reported). A
subject key present in several inputs is an error naming both files, unless ``on_duplicate="skip"``: then the
first input's copy is kept and the others are reported. The output is written under a temporary name beside
``out``, reopened and checked (the subject count and names must equal what was planned), and only then renamed
to ``out`` (replacing an older ``out``).
"""
from __future__ import annotations

import logging
import os
import uuid

from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError, VoxelpipeError
from voxelpipe.stores.subject_store import open_subject_store, subject_file_format
from voxelpipe.stores.zarr_store import remove

log = logging.getLogger("voxelpipe")

__all__ = ["merge", "MergeError"]


class MergeError(VoxelpipeError, RuntimeError):
    """The merged file does not hold what was planned (counts verified after the merge)."""


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a.rstrip("/")) == os.path.realpath(b.rstrip("/"))


def _publish(tmp: str, out: str) -> None:
    """Rename ``tmp`` to ``out``; an existing folder ``out`` is moved aside first and removed afterwards."""
    if os.path.isdir(out):
        aside = f"{out}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, aside)
        os.replace(tmp, out)
        remove(aside)
    else:
        if os.path.exists(out) and os.path.isdir(tmp):
            os.remove(out)
        os.replace(tmp, out)


def merge(inputs, out, on_duplicate: str = defaults.MERGE_ON_DUPLICATE) -> dict:
    """Merge the subject files ``inputs`` into ``out`` (kinds from the suffixes; they may differ).

    Returns ``dict(out, inputs=[{path, subjects, incomplete, copied, skipped}], expected, written,
    skipped=[{subject, path, kept_from}], incomplete=[{subject, path}])``. Raises :class:`InputError` on a
    duplicate subject (``on_duplicate="error"``), an unreadable input or ``out`` among the inputs, and
    :class:`MergeError` when the reopened output does not hold exactly the planned subjects.
    """
    if on_duplicate not in ("error", "skip"):
        raise InputError(f"on_duplicate must be 'error' or 'skip', got {on_duplicate!r}")
    inputs = [os.fspath(p).rstrip("/") for p in inputs]
    out = os.fspath(out).rstrip("/")
    if not inputs:
        raise InputError("merge: give at least one input file")
    out_kind = subject_file_format(out)
    for path in inputs:
        subject_file_format(path)
        if not os.path.exists(path):
            raise InputError(f"{path}: no such subject file")
        if _same_path(path, out):
            raise InputError(f"{out}: the output is also an input; write the merge to a new file")
    seen_inputs: dict[str, str] = {}
    for path in inputs:
        real = os.path.realpath(path)
        if real in seen_inputs:
            raise InputError(f"{path}: given twice as input (also as {seen_inputs[real]})")
        seen_inputs[real] = path

    # plan: who provides each subject (duplicates decided before anything is written)
    owner: dict[str, str] = {}
    plan: list[tuple[str, list[str]]] = []
    per_input, skipped, incomplete = [], [], []
    layout: dict = {}
    for path in inputs:
        with open_subject_store(path, "r") as store:
            subjects = store.subjects()
            leftovers = store.incomplete()
            if not layout:  # the output describes itself like the first input (subjects or 2-D projections)
                layout = {k: v for k, v in store.attrs.items() if k in ("layout", "content")}
        take = []
        row = {"path": path, "subjects": len(subjects), "incomplete": len(leftovers), "copied": 0, "skipped": 0}
        for subject in subjects:
            if subject in owner:
                if on_duplicate == "error":
                    raise InputError(f"subject {subject} is in both {owner[subject]} and {path} "
                                     "(use --on-duplicate skip to keep the first)")
                skipped.append({"subject": subject, "path": path, "kept_from": owner[subject]})
                row["skipped"] += 1
                continue
            owner[subject] = path
            take.append(subject)
        row["copied"] = len(take)
        incomplete.extend({"subject": s, "path": path} for s in leftovers)
        plan.append((path, take))
        per_input.append(row)

    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(out)
    tmp = os.path.join(folder, f".{base}.partial-{uuid.uuid4().hex[:8]}")
    try:
        with open_subject_store(tmp, "w", kind=out_kind, **layout) as target:
            for path, take in plan:
                if not take:
                    continue
                with open_subject_store(path, "r") as source:
                    for subject in take:
                        target.copy_subject(source, subject)
        with open_subject_store(tmp, "r", kind=out_kind) as check:
            written = check.subjects()
        expected = sorted(owner)
        if written != expected:
            missing = sorted(set(expected) - set(written))
            extra = sorted(set(written) - set(expected))
            raise MergeError(f"{out}: merged file holds {len(written)} subjects, expected {len(expected)} "
                             f"(missing {missing[:5]}, unexpected {extra[:5]})")
        _publish(tmp, out)
    finally:
        remove(tmp)
    for item in skipped:
        log.warning("merge: subject %s of %s skipped (kept the one from %s)", item["subject"], item["path"],
                    item["kept_from"])
    for item in incomplete:
        log.warning("merge: incomplete subject %s of %s left out", item["subject"], item["path"])
    return {"out": out, "inputs": per_input, "expected": len(expected), "written": len(written),
            "skipped": skipped, "incomplete": incomplete}
