"""The ``stats.zarr`` statistics stores on disk: locking, reading, atomic replacement and recovery.

Both statistics stores (rasters: :mod:`pipeline.raster.stats`, volumes: :mod:`pipeline.volume.stats_zarr`)
are built in a fresh sibling folder and swapped into place: the whole store rewritten, or
(rasters) a copy whose unchanged chunk files are hard links to the old store's. This module holds
what the two share:

* :func:`lock`: an advisory ``flock`` on the store's folder, exclusive for writers (the whole
  read-modify-swap) and shared for readers;
* :func:`open_stats`: a consistent in-memory snapshot of a store, read under the shared lock;
* :func:`open_stats_lazy`: a store's arrays as dask arrays, for a whole rewrite in bounded memory;
* :func:`replace_store`: write a Dataset next to the store and swap it in atomically;
* :func:`update_store`, :func:`linked_copy`: build a store from the old one's files and swap it in;
* :func:`check_chunk_sizes`: every chunk file there with its size as written (no read);
* :func:`recover`: undo what a run killed inside a swap left behind;
* :func:`fixed_width_strings`: string coordinates and variables as fixed-width unicode (``<U{n}``).

Strings are stored fixed-width because zarr v3's variable-length strings (numpy ``object`` on
write) read back as numpy ``StringDType``, which xarray cannot plot and numpy cannot cast to ``str``;
``<U`` round-trips as ``<U``. zarr-python warns that its ``fixed_length_utf32`` type has no v3
specification yet (other zarr libraries may not read it); segpipe silences that warning where it
reads and writes the stores.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from glob import escape as glob_escape
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipeline.errors import InputError
from pipeline.known_warnings import known_warnings_ignored
from pipeline.outputs import remove_stale_temporaries, stale_temporaries, stats_store_kind, temporary_name

if TYPE_CHECKING:
    import xarray as xr

log = logging.getLogger(__name__)

LockMode = Literal["exclusive", "shared"]

# Linux renameat2(2): exchange two paths in one step (since Linux 3.15, glibc 2.28)
AT_FDCWD = -100
RENAME_EXCHANGE = 2
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP}  # kernel or file system without it

# root attribute of a store written with every chunk (a missing chunk file is then damage, not a fill value)
EVERY_CHUNK_ATTR = "segpipe_every_chunk"
# its value: the integer 1, not True. netCDF has no boolean attributes, so an analyst's
# ds.to_netcdf("x.nc") failed on a store carrying True ("illegal data type for attribute ... got b1"
# with netCDF4, the default engine; h5netcdf likewise). Stores written before hold True: still read
# as "every chunk written"; their next raster append is a whole rewrite, which converts them.
EVERY_CHUNK_VALUE = 1

# in each array's folder of a store written by segpipe: the size of each of its chunk files, so a fast
# update (pipeline.raster.stats) tells a truncated chunk file from a sound one without reading it
CHUNK_SIZES_FILE = "segpipe-chunk-sizes.json"

# the dimension a store is chunked along, TIME_CHUNK steps per chunk: an update of one time step
# writes the chunk files of those steps and links the others (see linked_copy). One step per chunk made
# a store of a year of 50 scenes 5000 files, which took 8x longer to read (zarr's cost per chunk) and
# to link (a folder per chunk); 32 steps keep the bytes an update rewrites small (a month of nights)
TIME_DIM = "time"
TIME_CHUNK = 32
# ... and one scene per chunk where a variable holds more than one value per (time, scene) (regions, classes):
# each scene of a night appends its own entry, and with every scene in one chunk the Nth scene's append read
# and wrote all N scenes' values (at 3,000 districts, 100 scenes: 768 MB a variable, 6-12 s an append; see
# docs/benchmarks.md section 6). Per-entry variables (the provenance strings, (time, scene)) stay whole along
# scene: a chunk of them is a few KB, and one file per scene would only add files for every append to link.
SCENE_DIM = "scene"


# chunk keys of the time variables: ``c.<t>.<scene>.0.0``, files side by side in the array's folder. With zarr's
# default ``c/<t>/<scene>/0/0`` every chunk file had two folders of its own, and an append's linked copy made and
# the swap removed them all: at 365 nights x 100 scenes 19,000 folders, ~8 s of an append (files: a link each)
CHUNK_KEY_ENCODING = {"name": "default", "configuration": {"separator": "."}}


def store_chunks(dims: tuple[str, ...], shape: tuple[int, ...], name: str = "") -> tuple[int, ...] | None:
    """The chunk shape :func:`replace_store` gives a variable of ``dims`` and ``shape`` (None: one chunk, zarr's
    default): :data:`TIME_CHUNK` steps along ``time``; one step along ``scene`` where the variable has further
    dimensions; every other dimension whole. The ``time`` coordinate itself (``name``) is one chunk."""
    if TIME_DIM not in dims or name == TIME_DIM:
        return None
    split = SCENE_DIM in dims and len(dims) > 2
    return tuple(TIME_CHUNK if dim == TIME_DIM else 1 if (dim == SCENE_DIM and split) else max(size, 1) for dim, size in zip(dims, shape))

# per thread: the folders (device, inode) this thread holds a lock on, and how
_held = threading.local()


# --- the lock ---


@contextlib.contextmanager
def lock(store: str | Path, mode: LockMode = "exclusive") -> Iterator[None]:
    """Hold an advisory lock for the store ``store``: ``exclusive`` (writers) or ``shared`` (readers).

    The lock is a POSIX ``flock`` on the store's *folder* (a no-op where ``fcntl`` is missing).
    Of the two schemes the stores used before, this one is kept over a ``.stats.zarr.lock`` file
    that its holder creates and unlinks: a folder can be opened by anyone who can read it, so an
    analyst with read-only access can take the shared lock (a lock file needs write access to
    create), nothing is ever left behind by a killed holder (the kernel drops the lock with the
    process), and there is no unlink/re-open race to handle. The price: stores in one folder share
    one lock (segpipe keeps one store per ``--out`` folder), and flock on NFS directories may fail.

    Nested use on one thread does not deadlock: while a thread holds the lock on a folder, a
    further ``shared`` request (e.g. :func:`open_stats` inside a writer's update) or a further
    ``exclusive`` one under an ``exclusive`` lock is already satisfied. Other threads and processes
    wait as usual (every call opens its own file description).

    Raises:
        FileNotFoundError: the store's folder does not exist.
        RuntimeError: an ``exclusive`` request on a thread that holds only the ``shared`` lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        yield
        return
    fd = os.open(Path(store).absolute().parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        held: dict[tuple[int, int], LockMode] = _held.__dict__.setdefault("folders", {})
        if key in held:
            if held[key] == "shared" and mode == "exclusive":
                raise RuntimeError(f"{store}: this thread holds the shared statistics lock and asks for the exclusive one; release it first")
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX if mode == "exclusive" else fcntl.LOCK_SH)
        held[key] = mode
        try:
            yield
        finally:
            del held[key]
    finally:
        os.close(fd)  # releases the flock


# --- reading ---


def open_stats(store: str | Path, part: Callable[[xr.Dataset], xr.Dataset] | None = None) -> xr.Dataset:
    """A consistent snapshot of the statistics store ``store`` (or of a ``part`` of it), loaded into memory.

    Opens and loads the store under the shared :func:`lock`, so a run appending at the same time
    waits until the snapshot is read (and the reader waits for a swap in progress). String
    coordinates and variables come back as ``<U{n}`` whatever the store holds (stores written by
    older segpipe versions hold variable-length strings).

    Args:
        store: the ``stats.zarr`` folder.
        part: a selection of the store, applied to it opened lazily (variables, ``sel``/``isel``);
            only the chunks it needs are read. None: the whole store, which at operational scale
            (3,000 regions, 100 scenes, a year of nights: 38 GB as float64) does not fit in memory.

    A Dataset opened lazily with ``xr.open_zarr`` does not follow a later append: its metadata
    stays that of the store it opened while its chunks are read from the replaced one.

    Raises:
        FileNotFoundError: no store at ``store`` (or no folder).
        InputError: the store is damaged (metadata that does not parse, a chunk read that does not
            decode, or, in a store written with every chunk, a chunk file missing): its numbers are
            never returned, nor added to. ``part``'s own InputErrors pass through.
    """
    import xarray as xr

    with lock(store, "shared"), quiet():
        try:
            # chunks=None: numpy, not dask. Inside a Dask task (a study of `segpipe volume --dask-address`)
            # a dask load seceded from the worker's thread pool while holding this lock, and a study started
            # in the freed thread then waited on the lock while the load waited for that thread: deadlock
            with xr.open_zarr(store, consolidated=None, chunks=None) as ds:
                every_chunk = ds.attrs.get(EVERY_CHUNK_ATTR, False)
                loaded = (ds if part is None else part(ds)).load()
            loaded.attrs.pop(EVERY_CHUNK_ATTR, None)
            _check_every_chunk(store, every_chunk)
        except (FileNotFoundError, PermissionError, MemoryError, InputError):
            raise  # not the store's damage: no access, or too little memory to read it
        except Exception as exc:  # noqa: BLE001 - json, codecs and zarr raise several types for a damaged store
            raise damaged(store, f"{type(exc).__name__}: {exc}") from exc
        return fixed_width_strings(loaded)


def open_stats_lazy(store: str | Path) -> xr.Dataset:
    """The statistics store ``store`` opened for a whole rewrite in bounded memory: coordinates and the
    variables without a dimension beyond ``time`` and ``scene`` (the provenance strings, a few KB) loaded, as
    :func:`open_stats` loads them; every other variable a dask array chunked as the store, read chunk by chunk
    when computed (a chunk that does not decode raises :func:`damaged`, as :func:`open_stats` does).

    The caller holds :func:`lock` (the arrays are read later, while it writes the new store); root attributes
    without :data:`EVERY_CHUNK_ATTR`; strings fixed-width (:func:`fixed_width_strings`).

    Raises:
        FileNotFoundError: no store at ``store``.
        InputError: the store is damaged (metadata, a loaded variable, or a missing chunk file in a store
            written with every chunk).
    """
    import dask.array as da
    import xarray as xr

    with quiet():
        try:
            lazy = xr.open_dataset(store, engine="zarr", consolidated=None, chunks=None, cache=False)
            every_chunk = lazy.attrs.get(EVERY_CHUNK_ATTR, False)
            _check_every_chunk(store, every_chunk)
            variables = {}
            for name, variable in lazy.variables.items():
                big = set(variable.dims) - {TIME_DIM, SCENE_DIM} and TIME_DIM in variable.dims and variable.dtype.kind in "fiub"
                if not big:
                    variables[name] = variable.load()
                    continue
                chunks = variable.encoding.get("chunks") or variable.shape
                data = da.from_array(GuardedVariable(variable, store), chunks=chunks, name=f"segpipe-read-{name}-{os.urandom(4).hex()}",
                                     asarray=True, fancy=False, inline_array=True)  # fmt: skip
                variables[name] = variable.copy(deep=False, data=data)
            ds = xr.Dataset({k: v for k, v in variables.items() if k not in lazy.coords},
                            coords={k: v for k, v in variables.items() if k in lazy.coords}, attrs=dict(lazy.attrs))  # fmt: skip
            lazy.close()
        except (FileNotFoundError, PermissionError, MemoryError, InputError):
            raise
        except Exception as exc:  # noqa: BLE001 - as open_stats
            raise damaged(store, f"{type(exc).__name__}: {exc}") from exc
    ds.attrs.pop(EVERY_CHUNK_ATTR, None)
    return fixed_width_strings(ds)


class GuardedVariable:
    """A lazily indexed xarray Variable of a store as an array dask can slice: each read is one zarr read
    (decoded by xarray); one that fails is the store's damage (:func:`damaged`)."""

    def __init__(self, variable, store: str | Path) -> None:
        self.variable, self.store = variable, store
        self.shape, self.dtype, self.ndim = variable.shape, variable.dtype, variable.ndim

    def __getitem__(self, key):
        try:
            with quiet():
                return np.asarray(self.variable[key].values)
        except (FileNotFoundError, PermissionError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - codecs and zarr raise several types for a damaged chunk
            raise damaged(self.store, f"{type(exc).__name__}: {exc}") from exc


def _check_every_chunk(store: str | Path, every_chunk: int | bool) -> None:
    """In a store :func:`replace_store` wrote with every chunk, a missing chunk file is damage: zarr
    would read it back as the fill value (NaN areas, empty names) without a word."""
    if not every_chunk:  # written by an older segpipe: all-fill chunks were left out, so absence says nothing
        return
    import zarr

    check_every_chunk(zarr.open_group(store, mode="r"), store)


def check_every_chunk(group, store: str | Path) -> None:
    """Raise :class:`InputError` (damaged) when an array of the zarr ``group`` (a store written with
    every chunk) lacks chunk files. Lists the chunk files only; reads none."""
    for name, array in group.arrays():
        if array.nchunks_initialized != array.nchunks:
            raise damaged(store, f"{array.nchunks - array.nchunks_initialized} of the {array.nchunks} chunk(s) of '{name}' are missing")


def record_chunk_sizes(store: str | Path) -> None:
    """Write :data:`CHUNK_SIZES_FILE` into each array folder of the zarr store ``store``: ``{chunk key: bytes}``."""
    import json

    for entry in os.scandir(store):
        if entry.is_dir(follow_symlinks=False):
            sizes = {key: os.stat(path).st_size for key, path in _chunk_files(Path(entry.path))}
            (Path(entry.path) / CHUNK_SIZES_FILE).write_text(json.dumps(sizes, separators=(",", ":")), encoding="utf-8")


def check_chunk_sizes(store: str | Path) -> dict[str, int] | None:
    """The number of chunk files of each array of ``store``, after checking that each is there with the
    size it was written with (a stat of each, no read); None where a size record is missing (a store
    written before them: nothing to compare).

    Raises:
        InputError: a chunk file missing, added or of another size (damaged, as :func:`open_stats` says).
    """
    import json

    counts = {}
    for entry in os.scandir(store):
        if not entry.is_dir(follow_symlinks=False):
            continue
        record = Path(entry.path) / CHUNK_SIZES_FILE
        if not record.is_file():
            return None
        try:
            sizes = json.loads(record.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise damaged(store, f"{record.name} of '{entry.name}' does not parse: {exc}") from exc
        found = {key: os.stat(path).st_size for key, path in _chunk_files(Path(entry.path))}
        if found != sizes:
            bad = sorted(set(found) ^ set(sizes)) or sorted(k for k in found if found[k] != sizes[k])
            raise damaged(store, f"{len(bad)} chunk file(s) of '{entry.name}' missing, added or of another size than written, e.g. '{bad[0]}'")
        counts[entry.name] = len(found)
    return counts


def _chunk_files(array_dir: Path) -> Iterator[tuple[str, str]]:
    """``(key relative to the array folder, path)`` of each chunk file of ``array_dir``: under ``c/``
    (``/`` chunk keys) or named ``c`` or ``c.*`` (``.`` chunk keys)."""
    top = str(array_dir)
    for entry in os.scandir(top):
        if entry.name == "c" and entry.is_dir(follow_symlinks=False):
            for root, _dirs, files in os.walk(entry.path):
                rel = os.path.relpath(root, top).replace(os.sep, "/")
                for name in files:
                    yield f"{rel}/{name}", os.path.join(root, name)
        elif entry.name == "c" or entry.name.startswith("c."):
            yield entry.name, entry.path


def damaged(store: str | Path, problem: str) -> InputError:
    """The error for a damaged store (what :func:`open_stats` raises)."""
    return InputError(
        store, f"statistics store is damaged ({problem})",
        "restore it from a backup, or move it away to start a new one",
    )


# --- writing ---


def replace_store(ds: xr.Dataset, store: str | Path, *, unchanged: Unchanged | None = None) -> Path:
    """Write ``ds`` as a fresh zarr v3 store (consolidated) next to ``store`` and swap it in.

    The caller holds ``lock(store, "exclusive")`` for the read-modify-swap. Strings are written
    fixed-width (:func:`fixed_width_strings`); encodings read from an older store are dropped.
    Every variable with a ``time`` dimension (but the ``time`` coordinate, one chunk) is chunked as
    :func:`store_chunks` says: :data:`TIME_CHUNK` time steps per chunk, one scene per chunk where a
    scene's entry is an array (chunk files ``c.<t>.<scene>.0...``), other dimensions whole, so a later
    update of one scene's entry can link the other chunk files (:func:`linked_copy`).
    Variables held as dask arrays (:func:`open_stats_lazy`) are rechunked to those chunks and written one
    chunk at a time with dask's synchronous scheduler (memory: a chunk and the chunks it is computed from).
    Readers see the old store or the new one, never a half-written one.

    ``unchanged``: the store ``ds`` was computed from (see :class:`Unchanged`): a chunk of a dask variable that
    would be written with the bytes of one of its chunk files (same array metadata but the shape, same
    coordinates along the chunk, no changed entry in it) is that file, hard-linked (copied where the file
    system has no hard links), instead of read, decoded, encoded and written (:func:`_chunk_sources`).

    Returns:
        ``store``.
    """
    store = Path(store)
    ds = fixed_width_strings(ds).assign_attrs({EVERY_CHUNK_ATTR: EVERY_CHUNK_VALUE})
    for name, variable in ds.variables.items():
        variable.encoding = {}
        chunks = store_chunks(tuple(variable.dims), variable.shape, str(name))
        if chunks is not None:  # TIME_CHUNK steps (and one scene) per chunk: other nights' and scenes' chunk files stay
            variable.encoding.update(chunks=chunks, chunk_key_encoding=CHUNK_KEY_ENCODING)
    if TIME_DIM in ds.variables and ds.variables[TIME_DIM].dtype.kind == "M":
        times = ds.variables[TIME_DIM].values
        if (times.astype("datetime64[s]") == times).all():  # fixed units: a later time appended in place fits them
            ds.variables[TIME_DIM].encoding.update(units="seconds since 1970-01-01", calendar="proleptic_gregorian")
    lazy = False
    for name, variable in ds.variables.items():  # dask arrays (open_stats_lazy): chunked as written, so each chunk is written once
        if hasattr(variable.data, "dask"):
            lazy = True
            chunks = variable.encoding.get("chunks") or variable.shape
            variable.data = variable.data.rechunk(chunks)
    tmp = _sibling(store, "tmp")
    try:
        with quiet(), _synchronous(lazy):  # every chunk written, all-NaN ones too: a missing one is then damage (open_stats)
            # with dask variables, to_zarr writes the metadata and the others; handed the real dask graphs (the old store's
            # reads and the merge) it spent ~2.7 s of a new scene's 4.3 s optimising the delayed write it returns, unused
            _placeholders(ds).to_zarr(tmp, mode="w", zarr_format=3, consolidated=True, write_empty_chunks=True, compute=not lazy)
            if lazy:  # the metadata and the in-memory variables are written; the dask arrays one chunk at a time
                write_chunkwise(ds, tmp, unchanged)
            record_chunk_sizes(tmp)
        swap_in(tmp, store)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return store


def _placeholders(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with each dask variable's data a trivial dask array of the same shape, chunks and type (attributes and
    encoding kept): what ``to_zarr(compute=False)`` needs to write the store's metadata, never computed."""
    import dask.array as da

    out = ds.copy(deep=False)
    for name, variable in ds.variables.items():
        if hasattr(variable.data, "dask"):
            out.variables[name].data = da.zeros(variable.shape, dtype=variable.dtype, chunks=-1)  # one task: the zarr chunks are the encoding's
    return out


def write_chunkwise(ds: xr.Dataset, tmp: Path, unchanged: Unchanged | None = None) -> None:
    """Write each dask variable of ``ds`` into the store ``tmp`` (its metadata written) one chunk at a time: a
    chunk computed (its old chunk read), written, dropped; or, where ``unchanged`` holds it (:func:`_chunk_sources`),
    the old chunk file linked. One ``dask.array.store`` of the whole Dataset let dask's ordering read ahead (~a
    chunk per scene held: 1 GB at 50 scenes x 3,000 regions, 387 MB so)."""
    import itertools

    import zarr

    group = zarr.open_group(tmp, mode="r+")
    with zarr.config.set({"array.write_empty_chunks": True}):
        for name, variable in ds.variables.items():
            data = variable.data
            if not hasattr(data, "dask"):
                continue
            array = group[str(name)]
            source = _chunk_sources(ds, str(name), tmp, unchanged)
            starts = [np.cumsum((0, *c)) for c in data.chunks]
            compute = _chunk_computer(data)
            for index in itertools.product(*(range(n) for n in data.numblocks)):
                old_file = source(index) if source is not None else None
                if old_file is not None:
                    _link_or_copy(old_file, tmp / str(name) / _chunk_key(index))
                    continue
                where = tuple(slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts, index))
                array[where] = compute(index)


def _chunk_computer(data) -> Callable[[tuple[int, ...]], np.ndarray]:
    """Computes one chunk of the dask array ``data`` at a time with dask's synchronous scheduler: the graph culled, layer
    by layer, to the tasks that chunk needs, and run as it is (``data.blocks[i].compute()`` also optimised it: ~20 ms a
    chunk, ~1 s of a new scene's append that writes ~100 chunks and links the rest)."""
    from dask.core import flatten
    from dask.local import get_sync

    def compute(index: tuple[int, ...]) -> np.ndarray:
        block = data.blocks[index]
        (key,) = flatten(block.__dask_keys__())
        graph = block.__dask_graph__().cull({key})
        return np.asarray(get_sync(dict(graph), key))

    return compute


@dataclass(frozen=True)
class Unchanged:
    """What a whole rewrite changes in the store it replaces, so that :func:`replace_store` can take the chunk
    files it would write with the same bytes from that store.

    Attributes:
        store: the old store (under the caller's exclusive lock until the swap; checked as a fast update checks
            it: every chunk file there with its recorded size, :func:`check_chunk_sizes`).
        coords: the old store's coordinates by dimension (``time`` decoded, as the new Dataset holds it).
        changed: the ``(time, scene)`` entries whose values in the new store differ from the old store's (the
            entry appended or replaced); every other value of the new store at a time and scene of the old one
            must be the old store's there (what :func:`pipeline.raster.stats.append_stats`'s merge gives).
    """

    store: Path
    coords: Mapping[str, np.ndarray]
    changed: tuple[tuple[np.datetime64, str], ...]


# module switch: False writes every chunk of a whole rewrite (the tests compare both ways)
LINK_UNCHANGED = True


def _chunk_sources(ds: xr.Dataset, name: str, tmp: Path, unchanged: Unchanged | None) -> Callable[[tuple[int, ...]], Path | None] | None:
    """For the variable ``name`` of ``ds`` (dims ``(time, scene, ...)``, chunked as written to ``tmp``): a function from a
    chunk's index to the old store's chunk file holding the same bytes, or None for a chunk to write.

    A chunk's file is the old one where the array's metadata in ``tmp`` is the old array's but its shape (codecs,
    chunk grid, fill value, attributes: the same bytes for the same values), every dimension but ``time`` and
    ``scene`` has the old coordinates in the old order, the chunk's time steps are the old chunk's (same times at
    the same places, as many), its scene is in the old store, and no changed entry falls in it. Appending a scene
    at a night the store holds thus writes that scene's chunks and links all others; a new night in the last chunk
    along time rewrites that chunk of every scene; a new region or class, or an earlier night, rewrites all."""
    import json

    variable = ds.variables[name]
    if unchanged is None or not LINK_UNCHANGED or tuple(variable.dims[:2]) != (TIME_DIM, SCENE_DIM):
        return None
    old_dir, new_dir = unchanged.store / name, tmp / name
    try:
        old_meta = json.loads((old_dir / "zarr.json").read_text(encoding="utf-8"))
        new_meta = json.loads((new_dir / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if {k: v for k, v in old_meta.items() if k != "shape"} != {k: v for k, v in new_meta.items() if k != "shape"}:
        return None
    if new_meta.get("chunk_key_encoding") != {"name": "default", "configuration": {"separator": "."}}:
        return None
    coords = unchanged.coords
    for dim in variable.dims[2:]:
        old, new = coords.get(dim), ds[dim].values
        if old is None or len(old) != len(new) or [str(v) for v in old] != [str(v) for v in new]:
            return None
    old_times, new_times = np.asarray(coords[TIME_DIM]), np.asarray(ds[TIME_DIM].values)
    if old_times.dtype != new_times.dtype:
        return None
    step = int(new_meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    old_scene = {str(s): i for i, s in enumerate(coords[SCENE_DIM])}
    new_scenes = [str(s) for s in ds[SCENE_DIM].values]
    changed = {(str(scene), int(np.searchsorted(new_times, time))) for time, scene in unchanged.changed}

    def source(index: tuple[int, ...]) -> Path | None:
        rows = slice(index[0] * step, (index[0] + 1) * step)
        scene = new_scenes[index[1]]
        if scene not in old_scene or any(s == scene and rows.start <= t < rows.stop for s, t in changed):
            return None
        if not np.array_equal(old_times[rows], new_times[rows]):
            return None
        return old_dir / _chunk_key((index[0], old_scene[scene], *index[2:]))

    return source


def _chunk_key(index: tuple[int, ...]) -> str:
    return "c." + ".".join(str(int(i)) for i in index)  # CHUNK_KEY_ENCODING


# what os.link raises where the file system has no hard links (or too many on one file)
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src``, or a copy of it where links are refused."""
    try:
        _hard_link(str(src), str(dst))
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        shutil.copyfile(src, dst)


@contextlib.contextmanager
def _synchronous(lazy: bool) -> Iterator[None]:
    """Dask's synchronous scheduler while a store of dask arrays is written: one chunk after another in this
    thread (bounded memory; no threads holding the lock's reads; no deadlock inside a Dask worker)."""
    if not lazy:
        yield
        return
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


def update_store(store: str | Path, build: Callable[[Path], None]) -> Path:
    """Build a new store in a fresh sibling folder of ``store`` with ``build(tmp)``, consolidate its
    metadata and swap it in as :func:`replace_store` does (the temporary folder is removed on any error).

    The caller holds ``lock(store, "exclusive")``; ``build`` typically starts with :func:`linked_copy`.

    Returns:
        ``store``.
    """
    import zarr

    store = Path(store)
    tmp = _sibling(store, "tmp")
    try:
        with quiet():
            build(tmp)
            record_chunk_sizes(tmp)
            zarr.consolidate_metadata(str(tmp), zarr_format=3)
        swap_in(tmp, store)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return store


def linked_copy(store: str | Path, tmp: str | Path, *, rewrite: Mapping[str, str]) -> None:
    """Copy the zarr store ``store`` to the new folder ``tmp``, hard-linking the chunk files that stay.

    Copied: every metadata file (``zarr.json``; zarr rewrites them in place), every other file that
    is no chunk file, and every file of an array without a ``time`` dimension and of the ``time``
    coordinate itself. Hard-linked: the chunk files (``<array>/c.<t>...``) of every other array, but
    those under ``rewrite[array]`` (a chunk key or its leading part, e.g. ``c.3.17``: chunk 3 along
    time, 17 along scene), which are left out for the caller to write. zarr writes a chunk by opening
    its path for writing, which through a link would change the old store's file too (the store that
    must stay intact until the swap): the caller must write no chunk file in ``tmp`` but those left
    out or beyond the old shape. A store of one level of arrays in zarr v3 whose time arrays have
    ``.``-separated chunk keys (:data:`CHUNK_KEY_ENCODING`) is assumed (:mod:`pipeline.raster.stats`
    checks it). Lists every chunk file and links it: O(files), no read, one folder per array.
    """
    store, tmp = Path(store), Path(tmp)
    tmp.mkdir()
    for entry in os.scandir(store):
        if not entry.is_dir(follow_symlinks=False):
            shutil.copy2(entry.path, tmp / entry.name)
            continue
        src, dst = Path(entry.path), tmp / entry.name
        if entry.name == TIME_DIM or TIME_DIM not in dimension_names(src):
            shutil.copytree(src, dst)
            continue
        dst.mkdir()
        skip = rewrite.get(entry.name)
        for file in os.scandir(src):
            if file.name == "c" or not file.name.startswith("c."):
                shutil.copy2(file.path, dst / file.name)  # zarr.json, the chunk sizes
            elif skip is None or not (file.name == skip or file.name.startswith(skip + ".")):
                _hard_link(file.path, str(dst / file.name))


def _hard_link(src: str, dst: str) -> None:
    """``os.link``: one name for what a file system without hard links refuses (see pipeline.raster.stats.NO_HARD_LINKS)."""
    os.link(src, dst)


def dimension_names(array_dir: Path) -> tuple[str, ...]:
    import json

    meta = json.loads((array_dir / "zarr.json").read_text(encoding="utf-8"))
    return tuple(meta.get("dimension_names") or ())


def swap_in(new: str | Path, store: str | Path) -> None:
    """Put the complete store folder ``new`` at ``store`` and remove the store that was there.

    On Linux the two are exchanged in one step (``renameat2`` with ``RENAME_EXCHANGE``), so
    ``store`` exists at every instant; then the old store, now at ``new``, is removed (a run killed
    before that leaves it under the temporary name, which :func:`recover` removes). Elsewhere, or
    where the kernel or file system cannot exchange, the old store is renamed to ``<name>.old-*``
    and ``new`` renamed into place: a run killed between the two renames leaves no store until
    :func:`recover` puts the old one back.
    """
    new, store = Path(new), Path(store)
    if not store.exists():
        os.rename(new, store)
    elif _exchange(new, store):
        shutil.rmtree(new, ignore_errors=True)
    else:
        old = _sibling(store, "old")
        os.rename(store, old)
        try:
            os.rename(new, store)
        except BaseException:
            os.rename(old, store)
            raise
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Exchange the paths ``a`` and ``b`` atomically; False where this system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        log.debug("renameat2(RENAME_EXCHANGE) unavailable here (%s): swapping %s by two renames", errno.errorcode.get(code, code), b)
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


@cache
def _renameat2():
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


def _sibling(store: Path, kind: Literal["tmp", "old"]) -> Path:
    return temporary_name(store, kind)


# --- recovery ---


def recover(store: str | Path) -> None:
    """Undo what a run killed while replacing ``store`` left behind (call under the exclusive lock).

    ``<name>.tmp-<8 hex>`` folders (a store being written, or the old store after an exchange) are
    removed; an ``<name>.old-<8 hex>`` statistics store is put back when ``store`` is missing (killed
    between the two renames of the fallback swap) and removed otherwise. Only names of exactly that
    form are touched (:func:`pipeline.outputs.stale_temporaries`), and only a folder holding
    statistics is ever put back: a user's ``stats.zarr.old-jan`` backup is left alone. The hidden
    names older segpipe versions used for volume stores (``.<name>.tmp-*``, ``.<name>.old``,
    ``.<name>.lock``) are handled alike.
    """
    store = Path(store)
    remove_stale_temporaries(store)
    for stale in store.parent.glob(f".{glob_escape(store.name)}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    store.with_name(f".{store.name}.lock").unlink(missing_ok=True)
    olds = [*stale_temporaries(store, "old"), store.with_name(f".{store.name}.old")]
    olds = [old for old in olds if stats_store_kind(old) is not None]
    for old in sorted(olds, key=lambda p: p.stat().st_mtime, reverse=True):
        if not store.exists():
            log.warning("restoring %s from %s, left by an interrupted run", store, old)
            os.rename(old, store)
        else:
            shutil.rmtree(old, ignore_errors=True)


# --- strings ---


def fixed_width_strings(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every string coordinate and variable as fixed-width unicode ``<U{n}`` (n: the longest).

    Converts numpy ``object`` arrays of ``str``, numpy ``StringDType`` and wider ``<U`` arrays;
    other variables (and object arrays holding anything but strings) are left as they are.
    Attributes are kept; a converted variable's encoding is dropped (one read from a store names the
    old type and its codec: ``ds.to_zarr`` would write variable-length strings again).
    """
    coords, data_vars = {}, {}
    for name, variable in ds.variables.items():
        if variable.dtype.kind not in "OTU":
            continue
        values = _fixed_width(variable.values)
        if values is None or values.dtype == variable.dtype:
            continue
        converted = variable.copy(data=values)
        converted.encoding = {}
        (coords if name in ds.coords else data_vars)[name] = converted
    return ds.assign_coords(coords).assign(data_vars)


def _fixed_width(values: np.ndarray) -> np.ndarray | None:
    items = values.ravel().tolist()
    if not all(isinstance(v, str) for v in items):
        return None
    width = max((len(v) for v in items), default=0) or 1
    return np.array(items, dtype=f"<U{width}").reshape(values.shape)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The known warnings, and zarr's warning that ``fixed_length_utf32`` has no v3 spec yet, silenced."""
    import warnings

    with known_warnings_ignored():
        with contextlib.suppress(ImportError):  # an older zarr: no such warning
            from zarr.errors import UnstableSpecificationWarning

            warnings.filterwarnings("ignore", category=UnstableSpecificationWarning)
        yield
