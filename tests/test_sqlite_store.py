"""SqliteStore: zarr's own store test suite (zarr.testing.store.StoreTests) plus zarr round trips."""
from __future__ import annotations

import pickle
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.codecs import BloscCodec
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.core.sync import sync
from zarr.testing.store import StoreTests

from voxelpipe.stores import sqlite_store
from voxelpipe.stores.sqlite_store import TABLE, SqliteStore

# The inherited async tests run under pytest-asyncio (strict mode: the project sets no asyncio_mode). The
# module-wide mark also lands on the inherited sync tests, for which pytest-asyncio only warns.
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:.*is marked with '@pytest.mark.asyncio' but it is not an async function"),
]


class TestSqliteStore(StoreTests[SqliteStore, cpu.Buffer]):
    store_cls = SqliteStore
    buffer_cls = cpu.Buffer

    # set/get bypass the store: a separate plain sqlite3 connection to the same file.
    async def set(self, store: SqliteStore, key: str, value: Buffer) -> None:
        with closing(sqlite3.connect(store.path)) as conn, conn:
            conn.execute(f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES (?, ?)", (key, value.to_bytes()))

    async def get(self, store: SqliteStore, key: str) -> Buffer:
        with closing(sqlite3.connect(store.path)) as conn:
            row = conn.execute(f"SELECT value FROM {TABLE} WHERE key = ?", (key,)).fetchone()
        assert row is not None, key
        return self.buffer_cls.from_bytes(row[0])

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        # The database exists before the tests open it, as LocalStore's root directory does in zarr's own tests:
        # a read-only store needs an existing file, and `set` above needs the table.
        path = tmp_path / "store.zarr.sqlite"
        sync(SqliteStore.open(path)).close()
        return {"path": str(path)}

    # pytest-asyncio strict mode only runs fixtures it is told about; the base class's are plain @pytest.fixture.
    @pytest_asyncio.fixture
    async def store(self, open_kwargs: dict[str, Any]):
        store = await self.store_cls.open(**open_kwargs)
        yield store
        store.close()

    @pytest_asyncio.fixture
    async def store_not_open(self, store_kwargs: dict[str, Any]):
        store = self.store_cls(**store_kwargs)
        yield store
        store.close()

    def test_store_repr(self, store: SqliteStore) -> None:
        assert str(store) == f"sqlite://{Path(store.path).as_posix()}"
        assert repr(store) == f"SqliteStore('{store}')"

    def test_store_supports_writes(self, store: SqliteStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: SqliteStore) -> None:
        assert store.supports_listing

    @pytest.mark.parametrize(
        "byte_range",
        [
            RangeByteRequest(0, 10),
            RangeByteRequest(5, 5),
            RangeByteRequest(8, 100),  # runs past the end: the rest
            RangeByteRequest(50, 60),  # starts past the end: empty
            OffsetByteRequest(0),
            OffsetByteRequest(9),
            OffsetByteRequest(50),
            SuffixByteRequest(0),
            SuffixByteRequest(3),
            SuffixByteRequest(50),  # longer than the value: all of it
        ],
    )
    @pytest.mark.parametrize("blobopen", [True, False], ids=["blobopen", "substr"])
    async def test_byte_range_edges(
        self, store: SqliteStore, byte_range: Any, blobopen: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        if blobopen and not sqlite_store._HAVE_BLOBOPEN:
            pytest.skip("sqlite3.Connection.blobopen needs Python >= 3.11")
        monkeypatch.setattr(sqlite_store, "_HAVE_BLOBOPEN", blobopen)
        data = bytes(range(10))
        await store.set("c/0", self.buffer_cls.from_bytes(data))
        if isinstance(byte_range, RangeByteRequest):
            expected = data[byte_range.start : byte_range.end]
        elif isinstance(byte_range, OffsetByteRequest):
            expected = data[byte_range.offset :]
        else:
            expected = data[len(data) - min(byte_range.suffix, len(data)) :]
        observed = await store.get("c/0", prototype=default_buffer_prototype(), byte_range=byte_range)
        assert observed is not None and observed.to_bytes() == expected
        assert store.get_sync("c/0", byte_range=byte_range).to_bytes() == expected  # type: ignore[union-attr]

    async def test_unpickled_store_reconnects(self, store: SqliteStore) -> None:
        await store.set("a/zarr.json", self.buffer_cls.from_bytes(b"{}"))
        clone = pickle.loads(pickle.dumps(store))
        assert not clone._is_open
        assert (await clone.get("a/zarr.json", default_buffer_prototype())).to_bytes() == b"{}"  # type: ignore[union-attr]
        assert clone._is_open
        clone.close()

    async def test_delete_dir_keeps_siblings_with_longer_names(self, store: SqliteStore) -> None:
        for key in ("foo/zarr.json", "foo/c/0", "foo0/zarr.json", "foo-bar/c/0", "foo"):
            await store.set(key, self.buffer_cls.from_bytes(b"x"))
        await store.delete_dir("foo")
        assert sorted([k async for k in store.list()]) == ["foo", "foo-bar/c/0", "foo0/zarr.json"]
        assert sorted([k async for k in store.list_dir("")]) == ["foo", "foo-bar", "foo0"]

    def test_threads_share_one_store(self, store: SqliteStore) -> None:
        def write(worker: int) -> None:
            for i in range(50):
                store.set_sync(f"w{worker}/c/{i}", self.buffer_cls.from_bytes(bytes([worker, i])))

        threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        sync(store.set("zarr.json", self.buffer_cls.from_bytes(b"{}")))  # from zarr's event-loop thread meanwhile
        for t in threads:
            t.join()
        assert sync(store.getsize_prefix("w")) == 4 * 50 * 2
        assert store.get_sync("w3/c/49").to_bytes() == bytes([3, 49])  # type: ignore[union-attr]

    def test_closed_writer_leaves_one_plain_file(self, tmp_path: Path) -> None:
        path = tmp_path / "s.sqlite"
        store = SqliteStore(path)
        store.set_sync("zarr.json", self.buffer_cls.from_bytes(b"{}"))
        assert (tmp_path / "s.sqlite-wal").exists()  # WAL while writing
        store.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
            assert conn.execute("PRAGMA page_size").fetchone()[0] == 65536

    def test_read_only_missing_file_raises(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            SqliteStore(tmp_path / "absent.sqlite", read_only=True).get_sync("zarr.json")


def _write_volume(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    rng = np.random.default_rng(0)
    data = rng.integers(-1024, 3000, size=(12, 40, 36), dtype=np.int16)
    attrs = {"spacing": [2.5, 0.7, 0.7], "origin": [0.0, -120.5, 30.0], "series": {"Modality": "CT"}}
    root = zarr.open_group(store=SqliteStore(path), mode="w", attributes=attrs)
    image = root.create_array(
        "image",
        shape=data.shape,
        chunks=(4, 20, 36),
        dtype=data.dtype,
        compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
    )
    image[:] = data
    return data, attrs


def test_zarr_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "series.zarr.sqlite"
    data, attrs = _write_volume(path)

    root = zarr.open_group(store=SqliteStore(path, read_only=True), mode="r")
    assert dict(root.attrs) == attrs
    image = root["image"]
    assert isinstance(image, zarr.Array)
    np.testing.assert_array_equal(image[:], data)
    np.testing.assert_array_equal(image[5:7, 3:30, 1], data[5:7, 3:30, 1])
    (blosc,) = image.compressors
    assert isinstance(blosc, BloscCodec) and blosc.cname.value == "zstd" and blosc.shuffle.value == "bitshuffle"
    assert image.nchunks_initialized == 3 * 2


def test_read_only_reopen_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "series.zarr.sqlite"
    data, _ = _write_volume(path)
    store = SqliteStore(path, read_only=True)
    root = zarr.open_group(store=store, mode="r")
    with pytest.raises(ValueError, match="read-only"):
        root["image"][0, 0, 0] = 1
    with pytest.raises(ValueError, match="read-only"):
        root.attrs["spacing"] = [1, 1, 1]
    with pytest.raises(ValueError, match="read-only"):
        store.set_sync("x", cpu.Buffer.from_bytes(b"x"))
    np.testing.assert_array_equal(root["image"][:], data)
    store.close()
