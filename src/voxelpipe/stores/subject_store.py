"""Subject files of the PET/CT pipeline: one HDF5 file (``.h5`` / ``.hdf5``) or Zarr directory (``.zarr``).

Layout (the same in both kinds)::

    /                      attrs: layout (this description), layout_version, voxelpipe_version, content
    image/<subject>        float32 [2, X, Y, Z]   channel 0 = PET, 1 = CT (arrays LAS: axes 0, 1, 2 → L, A, S)
    mask/<subject>         uint8   [1, X, Y, Z]   the tumour mask on the same grid
    mask_iso/<subject>     uint8   [1, X, Y, Z]   the iso-contour mask (SUV ≥ f × lesion SUVmax inside the mask)

The subject's metadata (geometry = ``Geometry.to_attrs()`` of the grid, SUV audit, normalisation parameters, ...)
are the attributes of ``image/<subject>``. In HDF5, scalar values (numbers, strings, booleans) are stored as
they are and every other value (lists, dicts, None) as JSON text, with the names of those attributes in the
attribute ``_json``; reading decodes them, so a JSON-ready dict round-trips exactly. Zarr keeps JSON natively.

The same layout with 2-D arrays (``[2, H, W]`` / ``[1, H, W]``) is used by ``project-2d`` (one entry per
subject and angle, ``<subject>_a<angle>``).

Completion: a subject is complete only after its last write, the attribute ``complete = True`` on
``image/<subject>``, set after the three arrays and the other attributes are written (and flushed). An entry
without it (a crash between writes) is not listed by :meth:`SubjectStore.subjects`, ``has()`` is False for it,
and the next :meth:`SubjectStore.write` of that subject replaces it.

Chunks: each channel in slabs along array axis 0 (``[1, k, Y, Z]``, about 4 MiB uncompressed), contiguous in
memory, so reading one subject reads whole chunks only. Codecs: HDF5 gzip level 1 with shuffle (as
``hdf5_store``), Zarr Blosc zstd level 1 with bitshuffle (as ``zarr_store``).

OME-Zarr (Zarr files only): each of the groups ``image``, ``mask``, ``mask_iso`` is an NGFF 0.5 image group
whose ``"ome"`` attribute lists one multiscale per complete 3-D subject (named after it; axes ``c`` (channel) then
the spatial axes named ``x``, ``y``, ``z`` after the patient axis each array axis runs along, e.g. ``c, x, y, z``
for LAS; scale = spacing, translation = the LPS origin projected on the array axes, mm; see
:mod:`voxelpipe.stores.ngff`). With ``levels`` > 1 the pyramid levels of ``<group>/<s>`` are
``<group>/.levels/<s>/1``, ``2``, ... (a name no subject can take); readers keep reading ``<group>/<s>``.

Only the main process writes a store; any number of processes may read a store nobody is writing.
"""
from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from voxelpipe._version import __version__
from voxelpipe.core.errors import InputError
from voxelpipe.core.types import Format
from voxelpipe.core.volume import json_default
from voxelpipe.stores import ngff
from voxelpipe.stores.registry import subject_file_format
from voxelpipe.stores.zarr_store import remove

__all__ = [
    "GROUPS",
    "LAYOUT",
    "LAYOUT_VERSION",
    "SubjectStore",
    "copy_subject",
    "open_subject_store",
    "subject_file_format",
]

LAYOUT_VERSION = 1
GROUPS = ("image", "mask", "mask_iso")
LAYOUT = (
    "voxelpipe subject file: groups image, mask, mask_iso holding one array per subject (same name in each). "
    "image/<s> float32 [2, X, Y, Z]: channel 0 = PET (normalised SUV), 1 = CT (normalised HU); mask/<s> and "
    "mask_iso/<s> uint8 [1, X, Y, Z] on the same grid. Arrays are indexed [X, Y, Z] along the axes of the "
    "orientation code in attrs (LAS: L, A, S). Subject metadata (geometry: LPS mm, SUV audit, normalisation) "
    "are the attributes of image/<s>; HDF5 attributes listed in '_json' hold JSON text. A subject is complete "
    "when image/<s> has the attribute complete = true (written last)."
)
LAYOUT_2D = (
    "voxelpipe 2-D projection file: groups image, mask, mask_iso holding one array per subject and angle, named "
    "<s>_a<angle in degrees, 3-digit integer part>. image/<key> float32 [2, H, W]: channel 0 = PET, 1 = CT "
    "maximum intensity projections; mask/<key>, mask_iso/<key> uint8 [1, H, W] the max projections of the "
    "masks. Rows run along the rotation axis, columns across (see attrs: axis, angle, pixel_spacing, "
    "column_direction, ray_direction, row_positions). Complete when image/<key> has complete = true."
)
COMPLETE = "complete"
LEVELS_GROUP = ".levels"
JSON_ATTR = "_json"
CHUNK_BYTES = 4 << 20
CLEVEL = 1


def spatial_axis_names(direction) -> list[str]:
    """``x``, ``y`` or ``z`` for each array axis: the LPS axis its direction column runs closest to."""
    columns = np.abs(np.asarray(direction, dtype=np.float64))
    names = ["xyz"[int(np.argmax(columns[:, axis]))] for axis in range(3)]
    return names if len(set(names)) == 3 else ["z", "y", "x"]


def ngff_entry(subject: str, shape: tuple[int, ...], attrs: dict, levels: int) -> dict | None:
    """The NGFF multiscale of one subject array ``[C, X, Y, Z]`` from its attrs' ``geometry`` (None for 2-D
    entries or attrs without geometry)."""
    geometry = attrs.get("geometry")
    if len(shape) != 4 or not isinstance(geometry, dict) or \
            any(geometry.get(k) is None for k in ("spacing", "origin", "direction")):
        return None
    names = ["c", *spatial_axis_names(geometry["direction"])]
    paths = [subject] + [f"{LEVELS_GROUP}/{subject}/{k}" for k in range(1, levels)]
    return ngff.multiscale(shape, ngff.spacing_of(geometry), ngff.projected_origin(geometry["origin"],
                           geometry["direction"]), levels, paths, name=subject, axis_names=names,
                           axis_types=["channel"])


def _check_name(subject: str) -> str:
    if not isinstance(subject, str) or not subject or "/" in subject or subject.startswith(".") \
            or subject != subject.strip():
        raise InputError(f"subject key {subject!r} is not usable as an array name (non-empty, no '/', no "
                         "leading '.', no surrounding blanks)")
    return subject


def chunks_for(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """``[1, k, ...rest]``: one channel, a slab of ``k`` planes along the first spatial axis (≈ 4 MiB)."""
    plane = int(np.prod(shape[2:], dtype=np.int64)) * itemsize
    k = max(1, min(shape[1], CHUNK_BYTES // max(1, plane)))
    return (1, k, *shape[2:])


def _as_image(image, subject: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim not in (3, 4) or array.shape[0] != 2:
        raise InputError(f"subject {subject}: image must be [2, X, Y, Z] (or [2, H, W]), got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise InputError(f"subject {subject}: image must be numeric, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _as_mask(mask, name: str, spatial: tuple[int, ...], subject: str) -> np.ndarray:
    array = np.asarray(mask)
    if array.shape != (1, *spatial):
        raise InputError(f"subject {subject}: {name} must have shape {(1, *spatial)} to match the image, "
                         f"got {array.shape}")
    if array.dtype == np.bool_ or array.dtype == np.uint8:
        return np.ascontiguousarray(array.view(np.uint8) if array.dtype == np.bool_ else array)
    if array.dtype.kind not in "iu":
        raise InputError(f"subject {subject}: {name} must be bool or integer labels 0..255, got {array.dtype}")
    if array.size and (int(array.min()) < 0 or int(array.max()) > 255):
        raise InputError(f"subject {subject}: {name} labels must be within 0..255, got "
                         f"{int(array.min())}..{int(array.max())}")
    return np.ascontiguousarray(array, dtype=np.uint8)


def _strict_json_default(value):
    """``json.dumps`` default: numpy scalars and arrays become plain JSON values; anything else is not JSON-ready."""
    if isinstance(value, (np.generic, np.ndarray)):
        return json_default(value)
    raise InputError(f"{type(value).__name__} is not JSON serialisable")


def _check_attrs(attrs: dict, subject: str) -> dict:
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise InputError(f"subject {subject}: attrs must be a dict, got {type(attrs).__name__}")
    try:
        return json.loads(json.dumps(attrs, default=_strict_json_default))  # JSON-ready check, numpy → plain, a copy
    except (TypeError, ValueError) as exc:
        raise InputError(f"subject {subject}: attrs are not JSON-ready: {exc}") from exc


# ---------------------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------------------
def _encode_h5_attrs(attrs: dict) -> dict:
    out, encoded = {}, []
    for key, value in attrs.items():
        if key == JSON_ATTR:
            raise InputError(f"attribute name {JSON_ATTR!r} is reserved")
        if isinstance(value, (bool, int, float, str)) and not (isinstance(value, int) and abs(value) >= 1 << 63):
            out[key] = value
        else:
            out[key] = json.dumps(value)
            encoded.append(key)
    out[JSON_ATTR] = json.dumps(encoded)
    return out


def _decode_h5_attrs(raw) -> dict:
    encoded = set()
    if JSON_ATTR in raw:
        value = raw[JSON_ATTR]
        encoded = set(json.loads(value.decode() if isinstance(value, bytes) else value))
    result = {}
    for key, value in raw.items():
        if key == JSON_ATTR:
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        if key in encoded:
            value = json.loads(value)
        result[key] = value
    return result


class _Hdf5Backend:
    kind = Format.HDF5
    axis_names: list[str] | None = None

    def __init__(self, path: str, mode: str):
        self.path = path
        h5mode = {"r": "r", "a": "a", "w": "w"}[mode]
        try:
            self.file = h5py.File(path, h5mode)
        except OSError as exc:
            raise InputError(f"{path}: cannot open as HDF5 ({exc})") from exc
        self.writable = mode != "r"

    # file level
    def file_attrs(self) -> dict:
        return _decode_h5_attrs(self.file.attrs)

    def set_file_attrs(self, attrs: dict) -> None:
        for key, value in _encode_h5_attrs(attrs).items():
            self.file.attrs[key] = value

    def ensure_groups(self) -> None:
        for group in GROUPS:
            self.file.require_group(group)

    # entries
    def names(self, group: str = "image") -> list[str]:
        return sorted(self.file[group].keys()) if group in self.file else []

    def is_complete(self, name: str) -> bool:
        if "image" not in self.file or name not in self.file["image"]:
            return False
        return bool(self.file["image"][name].attrs.get(COMPLETE, False))

    def remove(self, name: str) -> None:
        for group in GROUPS:
            if group in self.file and name in self.file[group]:
                del self.file[group][name]

    def put(self, group: str, name: str, data: np.ndarray) -> None:
        self.file[group].create_dataset(name, data=data, chunks=chunks_for(data.shape, data.dtype.itemsize),
                                        compression="gzip", compression_opts=CLEVEL, shuffle=True)

    def set_attrs(self, name: str, attrs: dict) -> None:
        dataset = self.file["image"][name]
        for key, value in _encode_h5_attrs(attrs).items():
            dataset.attrs[key] = value
        self.file.flush()  # the arrays and attrs reach the file before the completion mark

    def mark_complete(self, name: str) -> None:
        self.file["image"][name].attrs[COMPLETE] = True
        self.file.flush()

    def put_levels(self, group: str, name: str, levels: list[np.ndarray]) -> None:
        """HDF5 files hold full resolution only."""

    def set_ngff(self, name: str, entry: dict | None) -> None:
        """HDF5 files carry no NGFF metadata."""

    def get(self, group: str, name: str) -> np.ndarray:
        return self.file[group][name][()]

    def shape(self, group: str, name: str) -> tuple[int, ...]:
        return tuple(self.file[group][name].shape)

    def attrs(self, name: str) -> dict:
        result = _decode_h5_attrs(self.file["image"][name].attrs)
        result.pop(COMPLETE, None)
        return result

    def copy_from(self, other: _Hdf5Backend, name: str, new_name: str) -> None:
        """Compressed chunks copied as they are (h5py/HDF5 ``H5Ocopy``); image (with ``complete``) last."""
        for group in ("mask", "mask_iso", "image"):
            other.file.copy(other.file[group][name], self.file[group], name=new_name)
        self.file.flush()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


class _ZarrBackend:
    kind = Format.ZARR
    axis_names: list[str] | None = None

    def __init__(self, path: str, mode: str):
        self.path = path
        self.writable = mode != "r"
        try:
            if mode == "r":
                self.root = zarr.open_group(store=zarr.storage.LocalStore(path, read_only=True), mode="r")
            else:
                self.root = zarr.open_group(path, mode=mode, zarr_format=3)
        except (FileNotFoundError, ValueError, KeyError) as exc:  # zarr raises several kinds here
            raise InputError(f"{path}: cannot open as a Zarr group ({exc})") from exc

    def file_attrs(self) -> dict:
        return dict(self.root.attrs)

    def set_file_attrs(self, attrs: dict) -> None:
        self.root.attrs.update(attrs)

    def ensure_groups(self) -> None:
        for group in GROUPS:
            self.root.require_group(group)

    def _group(self, group: str):
        try:
            return self.root[group]
        except KeyError:
            return None

    def names(self, group: str = "image") -> list[str]:
        found = self._group(group)
        return sorted(found.array_keys()) if found is not None else []

    def _array(self, group: str, name: str):
        g = self._group(group)
        if g is None:
            return None
        try:
            return g[name]
        except KeyError:
            return None

    def is_complete(self, name: str) -> bool:
        array = self._array("image", name)
        return array is not None and bool(array.attrs.get(COMPLETE, False))

    def remove(self, name: str) -> None:
        self.set_ngff(name, None)
        for group in GROUPS:
            for target in (os.path.join(self.path, group, name), os.path.join(self.path, group, LEVELS_GROUP, name)):
                if os.path.isdir(target):
                    shutil.rmtree(target)

    def put(self, group: str, name: str, data: np.ndarray) -> None:
        """Array ``<group>/<name>``; named with :attr:`axis_names` when they fit its dimensions."""
        names = self.axis_names if self.axis_names and len(self.axis_names) == data.ndim else None
        codec = BloscCodec(cname="zstd", clevel=CLEVEL, shuffle="bitshuffle", typesize=data.dtype.itemsize)
        array = self.root[group].create_array(name, shape=data.shape, dtype=data.dtype,
                                              chunks=chunks_for(data.shape, data.dtype.itemsize),
                                              compressors=[codec], fill_value=0, overwrite=True,
                                              dimension_names=names)
        array[...] = data

    def put_levels(self, group: str, name: str, levels: list[np.ndarray]) -> None:
        """Pyramid levels 1.. of ``<group>/<name>`` as ``<group>/.levels/<name>/<k>``."""
        for index, data in enumerate(levels, start=1):
            self.put(group, f"{LEVELS_GROUP}/{name}/{index}", data)

    def set_ngff(self, name: str, entry: dict | None) -> None:
        """Put (``entry``) or drop (None) subject ``name``'s multiscale in the ``"ome"`` attribute of each group;
        the masks' entries are the image's with the same paths (each group holds its own arrays)."""
        for group in GROUPS:
            found = self._group(group)
            if found is None:
                continue
            ome = dict(found.attrs.get("ome") or {})
            entries = [e for e in ome.get("multiscales", []) if e.get("name") != name]
            if entry is None and len(entries) == len(ome.get("multiscales", [])):
                continue
            if entry is not None:
                entries.append(entry)
            entries.sort(key=lambda e: str(e.get("name")))
            if entries:
                found.attrs.update({"ome": {"version": ngff.NGFF_VERSION, "multiscales": entries}})
            elif "ome" in found.attrs:  # NGFF wants at least one multiscale: no subject, no metadata
                del found.attrs["ome"]

    def ngff_entry(self, name: str) -> dict | None:
        """Subject ``name``'s multiscale in ``image``'s ``"ome"`` attribute, or None."""
        found = self._group("image")
        entries = (found.attrs.get("ome") or {}).get("multiscales", []) if found is not None else []
        return next((e for e in entries if e.get("name") == name), None)

    def set_attrs(self, name: str, attrs: dict) -> None:
        self.root["image"][name].attrs.update(attrs)

    def mark_complete(self, name: str) -> None:
        self.root["image"][name].attrs.update({COMPLETE: True})

    def get(self, group: str, name: str) -> np.ndarray:
        return np.asarray(self.root[group][name][...])

    def shape(self, group: str, name: str) -> tuple[int, ...]:
        return tuple(self.root[group][name].shape)

    def attrs(self, name: str) -> dict:
        result = dict(self.root["image"][name].attrs)
        result.pop(COMPLETE, None)
        return result

    def copy_from(self, other: _ZarrBackend, name: str, new_name: str) -> None:
        """Array folders copied file by file (chunks as they are); image's ``zarr.json`` (holding
        ``complete``) is the very last file written; then the NGFF entry, renamed."""
        for group in GROUPS:
            levels = os.path.join(other.path, group, LEVELS_GROUP, name)
            if os.path.isdir(levels):
                os.makedirs(os.path.join(self.path, group, LEVELS_GROUP), exist_ok=True)
                shutil.copytree(levels, os.path.join(self.path, group, LEVELS_GROUP, new_name))
        for group in ("mask", "mask_iso", "image"):
            source = os.path.join(other.path, group, name)
            target = os.path.join(self.path, group, new_name)
            shutil.copytree(source, target,
                            ignore=lambda folder, files, top=source: ["zarr.json"] if folder == top else [])
            shutil.copy2(os.path.join(source, "zarr.json"), os.path.join(target, "zarr.json"))
        entry = other.ngff_entry(name)
        if entry is not None:
            entry = json.loads(json.dumps(entry))
            entry["name"] = new_name
            for dataset in entry["datasets"]:
                dataset["path"] = new_name if dataset["path"] == name else \
                    f"{LEVELS_GROUP}/{new_name}/{dataset['path'].rsplit('/', 1)[-1]}"
            self.set_ngff(new_name, entry)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------
# public store
# ---------------------------------------------------------------------------------------------------------
class SubjectStore:
    """A subject file (see the module docstring). Use :func:`open_subject_store`."""

    def __init__(self, path: str | os.PathLike, mode: str = "r", kind: Format | str | None = None,
                 layout: str = LAYOUT, content: str = "subjects", levels: int = 1):
        self.levels = ngff.check_levels(levels)
        if mode not in ("r", "a", "w"):
            raise InputError(f"mode must be 'r', 'a' or 'w', got {mode!r}")
        self.path = os.fspath(path).rstrip("/")
        if kind is None:
            self.kind = subject_file_format(self.path)
        elif kind in (Format.HDF5, Format.ZARR):
            self.kind = Format(kind)
        else:
            raise InputError(f"kind must be 'hdf5' or 'zarr', got {kind!r}")
        self.mode = mode
        if mode == "r" and not os.path.exists(self.path):
            raise InputError(f"{self.path}: no such subject file")
        if mode == "w" and self.kind == Format.ZARR and os.path.exists(self.path):
            remove(self.path)
        if mode != "r":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        backend = _Hdf5Backend if self.kind == Format.HDF5 else _ZarrBackend
        self._backend = backend(self.path, "a" if (mode == "w" and self.kind == Format.ZARR) else mode)
        if mode != "r":
            self._backend.ensure_groups()
            if "layout" not in self._backend.file_attrs():
                self._backend.set_file_attrs({"layout": layout, "layout_version": LAYOUT_VERSION,
                                              "voxelpipe_version": __version__, "content": content,
                                              "groups": list(GROUPS)})

    # -- context manager -------------------------------------------------------------------------------
    def __enter__(self) -> SubjectStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._backend.close()

    def __repr__(self) -> str:
        return f"SubjectStore({self.path!r}, mode={self.mode!r}, kind={str(self.kind)!r})"

    # -- reading -----------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        """File-level attributes: layout description, layout_version, voxelpipe_version, content, groups."""
        return self._backend.file_attrs()

    def subjects(self) -> list[str]:
        """The complete subjects, sorted."""
        return [name for name in self._backend.names() if self._backend.is_complete(name)]

    def incomplete(self) -> list[str]:
        """Entries left by an interrupted write (not complete); the next ``write`` of each replaces it."""
        names = set().union(*(self._backend.names(group) for group in GROUPS))
        return sorted(n for n in names if not self._backend.is_complete(n))

    def has(self, subject: str) -> bool:
        """True when ``subject`` is complete."""
        return self._backend.is_complete(subject)

    def __contains__(self, subject: str) -> bool:
        return self.has(subject)

    def __len__(self) -> int:
        return len(self.subjects())

    def _require(self, subject: str) -> None:
        if not self.has(subject):
            raise InputError(f"{self.path}: no complete subject {subject!r}")

    def read(self, subject: str) -> dict:
        """``dict(image=float32 [2, ...], mask=uint8 [1, ...], mask_iso=uint8 [1, ...], attrs=dict)``."""
        self._require(subject)
        return {"image": self._backend.get("image", subject), "mask": self._backend.get("mask", subject),
                "mask_iso": self._backend.get("mask_iso", subject), "attrs": self._backend.attrs(subject)}

    def read_attrs(self, subject: str) -> dict:
        """Only the attributes of ``image/<subject>``."""
        self._require(subject)
        return self._backend.attrs(subject)

    def shape(self, subject: str) -> tuple[int, ...]:
        """Shape of ``image/<subject>``."""
        self._require(subject)
        return self._backend.shape("image", subject)

    # -- writing -----------------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.mode == "r":
            raise InputError(f"{self.path}: opened read-only")

    def write(self, subject: str, image, mask, mask_iso, attrs: dict | None = None) -> None:
        """Write one subject: ``image`` [2, X, Y, Z] (cast to float32; 0 = PET, 1 = CT), ``mask`` and
        ``mask_iso`` [1, X, Y, Z] (bool or labels 0..255, stored uint8), ``attrs`` a JSON-ready dict. Any
        existing entry of that name (complete or a leftover of an interrupted write) is replaced. The subject
        becomes complete (listed, ``has`` True) with the last write."""
        self._writable()
        _check_name(subject)
        image = _as_image(image, subject)
        spatial = image.shape[1:]
        mask = _as_mask(mask, "mask", spatial, subject)
        mask_iso = _as_mask(mask_iso, "mask_iso", spatial, subject)
        attrs = _check_attrs(attrs, subject)
        if COMPLETE in attrs:
            raise InputError(f"subject {subject}: attribute name {COMPLETE!r} is reserved")
        backend = self._backend
        entry = ngff_entry(subject, image.shape, attrs, self.levels)
        names = [axis["name"] for axis in entry["axes"]] if entry is not None else None
        levels = self.levels if entry is not None else 1
        backend.remove(subject)
        backend.axis_names = names  # the NGFF axis names the arrays of this subject get (Zarr)
        for group, data in (("mask", mask), ("mask_iso", mask_iso), ("image", image)):
            backend.put_levels(group, subject, ngff.pyramid(data, levels, labels=group != "image"))
            backend.put(group, subject, data)
        backend.set_attrs(subject, attrs)
        backend.mark_complete(subject)
        if entry is not None:
            backend.set_ngff(subject, entry)

    def copy_subject(self, source: SubjectStore, subject: str, name: str | None = None) -> None:
        """Copy complete ``subject`` of ``source`` into this store (as ``name``): compressed chunks copied as
        they are between stores of the same kind, read and rewritten across kinds."""
        copy_subject(source, self, subject, name)


def copy_subject(source: SubjectStore, target: SubjectStore, subject: str, name: str | None = None) -> None:
    """See :meth:`SubjectStore.copy_subject`."""
    target._writable()
    source._require(subject)
    name = _check_name(name or subject)
    if source.kind == target.kind:
        target._backend.remove(name)
        target._backend.copy_from(source._backend, subject, name)
        if not target._backend.is_complete(name):  # pragma: no cover - the copied attrs carry the flag
            target._backend.mark_complete(name)
        return
    data = source.read(subject)
    target.write(name, data["image"], data["mask"], data["mask_iso"], data["attrs"])


def open_subject_store(path: str | os.PathLike, mode: str = "r", kind: Format | str | None = None, *,
                       layout: str = LAYOUT, content: str = "subjects", levels: int = 1) -> SubjectStore:
    """Open a subject file; its format comes from the suffix (``.h5`` / ``.hdf5`` → HDF5, ``.zarr`` → Zarr
    directory, see :func:`~voxelpipe.stores.registry.subject_file_format`) unless ``kind`` (a ``Format``:
    ``hdf5`` or ``zarr``) is given. ``mode``: ``"r"`` read, ``"a"`` read/write (created when absent),
    ``"w"`` truncate. New files get the file-level attrs ``layout`` (description), ``layout_version``,
    ``voxelpipe_version``, ``content``. ``levels``: OME-Zarr pyramid levels of the 3-D subjects written (Zarr
    files; 1 = full resolution only)."""
    return SubjectStore(path, mode, kind, layout, content, levels)
