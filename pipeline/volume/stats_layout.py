"""The volume ``stats.zarr`` on disk at hospital scale: chunked along ``study``, appended a chunk at a time.

A hospital batch or archive holds 1,000-50,000 studies of up to ~120 labels (TotalSegmentator's
``total`` task: 117 and background), ~20 KB a study as float64. Rewriting the whole store for every
study made a batch quadratic (:mod:`pipeline.volume.stats_zarr` merged each study into the store read
whole). Here:

* :func:`write_store`: the whole store written in the layout below into a fresh sibling folder and
  swapped in (:func:`pipeline.stats_store.swap_in`); variables held as dask arrays (:func:`open_lazy`)
  are written one chunk at a time, so a whole rewrite runs in memory bounded by a chunk.
* :func:`append_study`: a study whose row goes after the last stored one (its name sorts last, its
  labels are the store's or fewer) as a hard-linked copy of the store in which only the last chunk
  along ``study`` of each array is copied and appended to (``to_zarr(append_dim="study")``), swapped in
  by :func:`pipeline.stats_store.update_store`: the bytes read and written are those of one chunk.
* :func:`open_lazy`: a store's ``study x label`` arrays as dask arrays read chunk by chunk (a chunk that
  does not decode is the store's damage, as :func:`pipeline.stats_store.open_stats` says).

Layout: every variable with a ``study`` dimension (the ``study`` coordinate too) is chunked
:data:`STUDY_CHUNK` studies per chunk, its other dimensions whole, with flat chunk keys ``c.<i>.0...``
(:data:`pipeline.stats_store.CHUNK_KEY_ENCODING`); every chunk written (``segpipe_every_chunk``) and
each array's chunk file sizes recorded (:func:`pipeline.stats_store.record_chunk_sizes`), so an append
tells a missing or truncated chunk file from a sound one by a ``stat``. What readers see (variables,
dtypes, fill values, attributes, order) is exactly what the whole rewrite of
:mod:`pipeline.volume.stats_zarr` gives; only the chunks differ.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline import stats_store
from pipeline.outputs import temporary_name

log = logging.getLogger(__name__)

STUDY_DIM = "study"
# studies per chunk: an append rewrites one chunk per array (256 x 118 labels x 8 B = 240 KB a variable),
# and links the others: at 50,000 studies ~200 chunk files per array (~4,600 in all) to stat and link.
# 64 made 4x the files (the linked copy, the size checks and a whole read cost per file); 1,024 4x the bytes
STUDY_CHUNK = 256

# what os.link raises where the file system has no hard links (or too many on one file): the whole rewrite then
NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}


def study_chunks(dims: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The chunk shape :func:`write_store` gives a variable of ``dims`` and ``shape``: :data:`STUDY_CHUNK` along
    ``study``, every other dimension whole; None (one chunk, zarr's default) without a ``study`` dimension."""
    if STUDY_DIM not in dims:
        return None
    return tuple(STUDY_CHUNK if dim == STUDY_DIM else max(size, 1) for dim, size in zip(dims, shape))


# --- writing the whole store ---


def write_store(ds, store: str | Path) -> Path:
    """Write the statistics Dataset ``ds`` (dims ``study`` x ``label``; see :mod:`pipeline.volume.stats_zarr`)
    as a fresh zarr v3 store (consolidated) next to ``store`` and swap it in.

    The caller holds ``stats_store.lock(store, "exclusive")``. Strings are written fixed-width
    (:func:`pipeline.stats_store.fixed_width_strings`), encodings read from an older store dropped, every
    chunk written and its size recorded. Variables held as dask arrays are written one chunk at a time
    with dask's synchronous scheduler (memory: a chunk and the chunks it is computed from). Readers see the
    old store or the new one, never a half-written one; a run killed before the swap leaves a temporary
    folder that :func:`pipeline.stats_store.recover` removes.

    Returns:
        ``store``.
    """
    store = Path(store)
    ds = stats_store.fixed_width_strings(ds).assign_attrs({stats_store.EVERY_CHUNK_ATTR: stats_store.EVERY_CHUNK_VALUE})
    lazy = False
    for variable in ds.variables.values():
        variable.encoding = {}
        chunks = study_chunks(tuple(variable.dims), variable.shape)
        if chunks is None:
            continue
        variable.encoding.update(chunks=chunks, chunk_key_encoding=stats_store.CHUNK_KEY_ENCODING)
        if hasattr(variable.data, "dask"):  # chunked as written, so each chunk is computed and written once
            lazy = True
            variable.data = variable.data.rechunk(chunks)
    tmp = temporary_name(store, "tmp")
    try:
        with stats_store.quiet(), synchronous():
            ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True, write_empty_chunks=True, compute=not lazy)
            if lazy:  # the metadata and the in-memory variables are written; the dask arrays one chunk at a time
                stats_store.write_chunkwise(ds, tmp)
            stats_store.record_chunk_sizes(tmp)
        stats_store.swap_in(tmp, store)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return store


@contextlib.contextmanager
def synchronous() -> Iterator[None]:
    """Dask's synchronous scheduler: one chunk after another in this thread (bounded memory; inside a Dask
    worker no task seceding while this thread holds the store's lock)."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


# --- reading for a whole rewrite ---


def open_lazy(store: str | Path):
    """The store ``store`` opened for a whole rewrite in bounded memory: coordinates and the per-study
    variables (dim ``study`` only: a few MB at 50,000 studies) loaded; the ``study x label`` arrays dask arrays
    chunked as the store, each chunk read (and decoded by xarray) when computed. The caller holds the lock.

    Root attributes without ``segpipe_every_chunk``; strings fixed-width, as :func:`pipeline.stats_store.open_stats`.

    Raises:
        FileNotFoundError: no store at ``store``.
        InputError: the store is damaged (metadata, a loaded variable, a missing chunk file in a store written
            with every chunk; a chunk read later that does not decode).
    """
    import dask.array as da
    import xarray as xr

    with stats_store.quiet():
        try:
            lazy = xr.open_dataset(store, engine="zarr", consolidated=None, chunks=None, cache=False)
            if lazy.attrs.get(stats_store.EVERY_CHUNK_ATTR, False):
                import zarr

                stats_store.check_every_chunk(zarr.open_group(store, mode="r"), store)
            variables = {}
            for name, variable in lazy.variables.items():
                if variable.ndim < 2 or STUDY_DIM not in variable.dims or variable.dtype.kind not in "fiub":
                    variables[name] = variable.load()
                    continue
                chunks = variable.encoding.get("chunks") or variable.shape
                data = da.from_array(stats_store.GuardedVariable(variable, store), chunks=chunks, name=f"segpipe-read-{name}-{os.urandom(4).hex()}",
                                     asarray=True, fancy=False, inline_array=True)  # fmt: skip
                variables[name] = variable.copy(deep=False, data=data)
            ds = xr.Dataset({k: v for k, v in variables.items() if k not in lazy.coords},
                            coords={k: v for k, v in variables.items() if k in lazy.coords}, attrs=dict(lazy.attrs))  # fmt: skip
            lazy.close()
        except (FileNotFoundError, PermissionError, MemoryError, stats_store.InputError):
            raise
        except Exception as exc:  # noqa: BLE001 - json, codecs and zarr raise several types for a damaged store
            raise stats_store.damaged(store, f"{type(exc).__name__}: {exc}") from exc
    ds.attrs.pop(stats_store.EVERY_CHUNK_ATTR, None)
    return stats_store.fixed_width_strings(ds)


# --- the fast append ---


def append_study(row, store: Path, *, units: str) -> bool:
    """Append ``row`` (one study on the store's labels, in their order, values as the whole rewrite gives them)
    after the last study of ``store``, writing one chunk per array; False (nothing done) where only a whole
    rewrite can. The caller holds the exclusive lock and has checked that the row belongs after the last
    study with the store's variables, labels and string widths (:func:`pipeline.volume.stats_zarr`).

    ``units``: the intensities' ``units`` attribute after the append (a first MR study turns ``HU`` into
    ``image units``).

    Raises:
        InputError: a chunk file missing or of another size than written (the store is damaged).
    """
    import zarr

    counts = stats_store.check_chunk_sizes(store)  # a stat of each chunk file: a missing one would be linked into a sound-looking store
    if counts is None:
        log.debug("%s: no chunk sizes recorded; the whole store is rewritten", store)
        return False
    with stats_store.quiet():
        group = zarr.open_group(store, mode="r")
        arrays = dict(group.arrays())
    for name, array in arrays.items():
        if counts.get(name) != array.nchunks:
            raise stats_store.damaged(store, f"{array.nchunks - counts.get(name, 0)} of the {array.nchunks} chunk(s) of '{name}' are missing")
    n = int(arrays[STUDY_DIM].shape[0])
    last = f"c.{(n - 1) // STUDY_CHUNK}"
    intensities = [name for name, array in arrays.items() if array.attrs.get("units") in ("HU", "image units")]

    def build(tmp: Path) -> None:
        linked_copy(store, tmp, copy_chunk=last)
        with zarr.config.set({"array.write_empty_chunks": True}):
            appended = row.drop_vars([name for name in row.variables if STUDY_DIM not in row[name].dims])
            for variable in appended.variables.values():
                variable.encoding = {}
            appended.to_zarr(tmp, mode="a", append_dim=STUDY_DIM, zarr_format=3, consolidated=False, write_empty_chunks=True)
        for name in intensities:
            array = zarr.open_array(tmp, path=name, mode="r+")
            if array.attrs.get("units") != units:
                array.update_attributes({"units": units})

    try:
        with stats_store.quiet():
            stats_store.update_store(store, build)
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise  # a full disk, a read-only folder: the caller reports it
        log.debug("%s: no hard links here (%s); the whole store is rewritten", store, exc)
        return False
    return True


def linked_copy(store: Path, tmp: Path, *, copy_chunk: str) -> None:
    """Copy the zarr store ``store`` to the new folder ``tmp``: metadata files and arrays without a ``study``
    dimension copied; the chunk files of the others hard-linked but those of the chunk ``copy_chunk`` along
    ``study`` (e.g. ``c.195``), which are copied: the append writes them (zarr writes a chunk by opening its
    path for writing, which through a link would change the old store too). O(files), one folder per array."""
    tmp.mkdir()
    for entry in os.scandir(store):
        if not entry.is_dir(follow_symlinks=False):
            shutil.copy2(entry.path, tmp / entry.name)
            continue
        src, dst = Path(entry.path), tmp / entry.name
        if STUDY_DIM not in stats_store.dimension_names(src):
            shutil.copytree(src, dst)
            continue
        dst.mkdir()
        for file in os.scandir(src):
            if file.name == "c" or not file.name.startswith("c."):
                shutil.copy2(file.path, dst / file.name)  # zarr.json, the chunk sizes
            elif file.name == copy_chunk or file.name.startswith(copy_chunk + "."):
                shutil.copy2(file.path, dst / file.name)
            else:
                os.link(file.path, dst / file.name)


def chunked_as_written(arrays: dict[str, Any]) -> bool:
    """Whether the zarr ``arrays`` of a store are in :func:`write_store`'s layout (unsharded v3, ``.`` chunk keys,
    :data:`STUDY_CHUNK` along ``study``, other dimensions whole)."""
    from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

    for array in arrays.values():
        dims = tuple(array.metadata.dimension_names or ())
        if STUDY_DIM not in dims:
            continue
        encoding = array.metadata.chunk_key_encoding
        if array.metadata.zarr_format != 3 or array.shards is not None:
            return False
        if not isinstance(encoding, DefaultChunkKeyEncoding) or encoding.separator != ".":
            return False
        if tuple(array.chunks) != study_chunks(dims, array.shape):
            return False
    return True
