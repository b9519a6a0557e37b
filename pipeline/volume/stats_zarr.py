"""``stats.zarr``: the per-label statistics of every study (:mod:`pipeline.volume.stats`) in one Dataset.

``stats.zarr`` (``xr.open_zarr``) holds one Dataset with dims ``study`` x ``label`` (label names) and
variables ``volume_ml``, ``voxel_count``, ``intensity_mean``, ``intensity_std``, ``intensity_min``,
``intensity_max``, ``intensity_median``, ``intensity_p5``, ``intensity_p95``, ``n_components``,
``touches_border``, ``label_id`` (the label's value; -1 where the study's model has no such label),
``segmented`` (False where the study's model has no such label: its counts are 0, its ``volume_ml``
and intensities NaN), ``centroid_ras`` (+ dim ``ras``), ``bbox_min``/``bbox_max`` (+ dim ``axis`` =
``["z", "y", "x"]``: array axes, not anatomical directions) and per-study ``source``, ``modality``,
``model``, ``voxel_volume_mm3``, ``nodata_voxel_count`` and ``nodata_volume_ml`` (the voxels labelled
nodata; -1 and NaN in rows written before segpipe recorded them). Variables carry ``units`` attributes:
``mL``, ``mm`` (centroid), ``mm3``, and for intensities ``HU`` when every study is CT (DICOM Modality
CT), else ``image units``.
Studies are in name order, labels by label id. Re-running a study replaces its row. Every merge builds a new
store beside the old one and swaps it in under a lock on its folder (:mod:`pipeline.stats_store`), so readers
never see a half-written store; :func:`open_stats` reads a consistent snapshot. A study sorting after every
stored one is appended writing one chunk per array (:mod:`pipeline.volume.stats_layout`), any other merge
rewrites the store chunk by chunk in bounded memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import stats_store
from pipeline.volume import stats_layout
from pipeline.volume.stats import LabelStats, StudyStats

log = logging.getLogger(__name__)

STUDY_VARS = ("source", "modality", "model", "voxel_volume_mm3", "nodata_voxel_count", "nodata_volume_ml")
# outer-join fills: a label the study's model does not have; nodata_* also fill the rows of a store
# written before they were recorded ("not recorded": -1 voxels, NaN mL)
FILL: dict[str, Any] = {
    "label_id": -1,
    "segmented": False,
    "voxel_count": 0,
    "volume_ml": float("nan"),  # a label the study's model does not have: no volume was measured
    "n_components": 0,
    "touches_border": False,
    "bbox_min": -1,
    "bbox_max": -1,
    "nodata_voxel_count": -1,
    "nodata_volume_ml": float("nan"),
}


def stats_dataset(studies: Sequence[StudyStats]):
    """An xarray Dataset (``study`` x ``label``) of the given studies; see the module docstring."""
    import xarray as xr

    merged = xr.concat([_study_dataset(s) for s in studies], dim="study", join="outer", fill_value=FILL, data_vars="all", coords="different", compat="equals")
    return _annotated(merged)


def _study_dataset(stats: StudyStats):
    import xarray as xr

    names = _unique_names(stats.labels)
    n = len(names)

    def column(attr: str, dtype: Any) -> np.ndarray:
        return np.array([[getattr(lab, attr) for lab in stats.labels]], dtype=dtype).reshape(1, n)

    data_vars: dict[str, Any] = {
        "label_id": (("study", "label"), column("label_id", np.int64)),
        "segmented": (("study", "label"), np.ones((1, n), dtype=bool)),
        "voxel_count": (("study", "label"), column("voxel_count", np.int64)),
        "volume_ml": (("study", "label"), column("volume_ml", np.float64)),
        "n_components": (("study", "label"), column("n_components", np.int64)),
        "touches_border": (("study", "label"), column("touches_border", bool)),
    }
    for stat in ("mean", "std", "min", "max", "median", "p5", "p95"):
        data_vars[f"intensity_{stat}"] = (("study", "label"), column(f"intensity_{stat}", np.float64))
    data_vars["centroid_ras"] = (("study", "label", "ras"), np.array([[lab.centroid_ras for lab in stats.labels]], dtype=np.float64).reshape(1, n, 3))
    data_vars["bbox_min"] = (("study", "label", "axis"), np.array([[lab.bbox_min for lab in stats.labels]], dtype=np.int64).reshape(1, n, 3))
    data_vars["bbox_max"] = (("study", "label", "axis"), np.array([[lab.bbox_max for lab in stats.labels]], dtype=np.int64).reshape(1, n, 3))
    data_vars["source"] = (("study",), np.array([stats.source], dtype=object))
    data_vars["modality"] = (("study",), np.array([stats.modality], dtype=object))
    data_vars["model"] = (("study",), np.array([stats.model], dtype=object))
    data_vars["voxel_volume_mm3"] = (("study",), np.array([stats.voxel_volume_mm3], dtype=np.float64))
    data_vars["nodata_voxel_count"] = (("study",), np.array([stats.nodata_voxel_count], dtype=np.int64))
    data_vars["nodata_volume_ml"] = (("study",), np.array([stats.nodata_volume_ml], dtype=np.float64))
    coords = {
        "study": np.array([stats.study], dtype=object),
        "label": np.array(names, dtype=object),
        "ras": np.array(["R", "A", "S"], dtype=object),
        "axis": np.array(["z", "y", "x"], dtype=object),
    }
    return xr.Dataset(data_vars, coords=coords)


INTENSITY_VARS = tuple(f"intensity_{stat}" for stat in ("mean", "std", "min", "max", "median", "p5", "p95"))
UNITS = {"volume_ml": "mL", "centroid_ras": "mm", "voxel_volume_mm3": "mm3", "nodata_volume_ml": "mL"}
BBOX_DESCRIPTION = (
    "inclusive voxel index along the array axes (z, y, x) = (k, j, i), the reverse of nibabel's dataobj[i, j, k]; "
    "-1 where the label has no voxel"
)


def _annotated(ds):
    """``units`` and descriptions on the variables of a statistics Dataset (all its studies).

    Intensities are in ``HU`` when every study is CT (DICOM Modality CT), else in ``image units``
    (NIfTI carries no modality, MR has no absolute unit).
    """
    for name, units in UNITS.items():
        if name in ds:
            ds[name].attrs["units"] = units
    intensity = "HU" if set(ds["modality"].values.tolist()) == {"CT"} else "image units"
    for name in INTENSITY_VARS:
        ds[name].attrs["units"] = intensity
    for name in ("bbox_min", "bbox_max"):
        ds[name].attrs["description"] = BBOX_DESCRIPTION
    ds["axis"].attrs["description"] = "array axes of the (Z, Y, X) volume, not anatomical directions (centroid_ras is RAS mm)"
    ds["label_id"].attrs["description"] = "the label's value in the labels volume; -1 where the study's model has no such label"
    ds["segmented"].attrs["description"] = "False where the study's model has no such label (volume_ml and intensities NaN, counts 0)"
    for name, what in (("nodata_voxel_count", "voxels"), ("nodata_volume_ml", "volume")):
        if name not in ds:
            continue
        ds[name].attrs["description"] = (
            f"{what} labelled nodata (no image data in the input: DICOM pixel padding, NaN in NIfTI), in no label's figures; "
            f"{'-1' if what == 'voxels' else 'NaN'} in rows written before segpipe recorded it"
        )
    return ds


def _unique_names(labels: Sequence[LabelStats]) -> list[str]:
    names = [lab.name for lab in labels]
    return [n if names.count(n) == 1 else f"{n} ({lab.label_id})" for n, lab in zip(names, labels)]


# module switch: False makes every merge rewrite the whole store (the tests compare both ways)
FAST_APPEND = True


def merge_into_store(stats: StudyStats, store: str | Path) -> Path:
    """Add (or replace) the row of ``stats.study`` in the ``stats.zarr`` at ``store``.

    Under the exclusive lock of :mod:`pipeline.stats_store` (an interrupted swap recovered first). A study
    whose name sorts after every stored one, with the store's labels or fewer (in an order the store keeps)
    and strings no longer than the store's, is appended: one chunk per array written, the others hard-linked
    (:func:`pipeline.volume.stats_layout.append_study`). Anything else (a re-run, a study sorting earlier,
    new labels, a store of an older segpipe) rewrites the store chunk by chunk in bounded memory
    (:func:`pipeline.volume.stats_layout.write_store`). Either way a new store is built beside the old one
    and swapped in: readers see one or the other, and the result is the same Dataset.

    Raises:
        InputError: ``store`` holds other statistics, or is damaged; it is left as it was.
    """
    import xarray as xr

    store = Path(store)
    with stats_store.lock(store, "exclusive"):
        stats_store.recover(store)
        row = _study_dataset(stats)
        rows = [row]
        if store.exists():
            if FAST_APPEND and _append(stats, row, store):
                return store
            existing = stats_layout.open_lazy(store)  # dask arrays, read chunk by chunk while the new store is written
            if "study" not in existing.dims or "label" not in existing.dims:
                from pipeline.errors import InputError

                problem = f"holds other statistics (dims {dict(existing.sizes)}), not study x label volume statistics"
                raise InputError(store, problem, "write volume results to another --out folder")
            if stats.study in set(existing.study.values.tolist()):
                existing = existing.drop_sel(study=stats.study)
            if existing.sizes.get("study", 0):
                rows.insert(0, _normalised(existing))
        with stats_layout.synchronous():  # the label order reads label_id; no dask threads while the lock is held
            merged = xr.concat(rows, dim="study", join="outer", fill_value=FILL, data_vars="all", coords="different", compat="equals")
            merged = _normalised(merged)
            merged = merged.sortby([merged["label_id"].max("study").compute(), merged["label"]]).sortby("study")
            merged["volume_ml"] = merged["volume_ml"].where(merged["segmented"])  # NaN also in rows of stores written with 0.0
            stats_layout.write_store(_annotated(merged), store)
    return store


def _append(stats: StudyStats, row, store: Path) -> bool:
    """Append ``row`` (:func:`_study_dataset` of ``stats``) after the last study of ``store`` when the whole rewrite
    would give the store plus that row at its end (see :func:`merge_into_store`); False (nothing done) otherwise."""
    import xarray as xr
    import zarr

    try:
        with stats_store.quiet():
            group = zarr.open_group(store, mode="r")
            every_chunk = group.attrs.get(stats_store.EVERY_CHUNK_ATTR, False)
            arrays = dict(group.arrays())
            lazy = xr.open_zarr(store, consolidated=None, chunks=None)  # metadata and index coordinates only
    except (FileNotFoundError, PermissionError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged store: the whole rewrite's read reports it
        log.debug("%s: no fast append (%s: %s)", store, type(exc).__name__, exc)
        return False
    with lazy:
        why = _why_not_appended(stats, row, lazy, arrays, every_chunk)
        if why is None:
            labels = [str(v) for v in lazy["label"].values]
            stored_max = _label_id_max(arrays["label_id"], store)
            ids = dict(zip((str(v) for v in row["label"].values), row["label_id"].values[0].tolist()))
            after = np.maximum(stored_max, [ids.get(name, -1) for name in labels])
            if not (np.lexsort((np.array(labels), after)) == np.arange(len(labels))).all():
                why = "the row's label ids change the label order"
        if why is not None:
            log.debug("%s: no fast append of %s: %s", store, stats.study, why)
            return False
        units = "HU" if lazy["intensity_mean"].attrs.get("units") == "HU" and stats.modality == "CT" else "image units"
        new = _normalised(row.reindex(label=np.array(labels, dtype=object), fill_value=FILL))
        new["volume_ml"] = new["volume_ml"].where(new["segmented"])
        new = new.assign({name: new[name].astype(lazy[name].dtype) for name in ("source", "modality", "model")})
        new = new.assign_coords(study=new["study"].values.astype(lazy["study"].dtype))  # the store's string widths
        new.attrs = dict(lazy.attrs)  # append mode writes the root attributes too (segpipe_every_chunk)
        for name, variable in new.variables.items():
            variable.attrs = dict(lazy[name].attrs)
            if name in INTENSITY_VARS:
                variable.attrs["units"] = units
        for name in new.data_vars:
            if new[name].dtype != lazy[name].dtype:
                log.debug("%s: no fast append of %s: '%s' is %s in the store, %s in the row", store, stats.study, name, lazy[name].dtype, new[name].dtype)
                return False
    return stats_layout.append_study(new, store, units=units)


def _why_not_appended(stats: StudyStats, row, lazy, arrays: dict[str, Any], every_chunk: Any) -> str | None:
    """Why ``row`` cannot be appended to the store opened as ``lazy`` (``arrays``: its zarr arrays) as it is; None when it can."""
    if isinstance(every_chunk, bool) or every_chunk != stats_store.EVERY_CHUNK_VALUE:
        return "a store of an older segpipe (not every chunk written)"
    if not stats_layout.chunked_as_written(arrays):
        return "a store of an older segpipe (not chunked along study)"
    if set(lazy.variables) != set(row.variables) or set(arrays) != set(lazy.variables):
        return "other variables"
    for name, variable in row.variables.items():
        if tuple(lazy[name].dims) != tuple(variable.dims):
            return f"'{name}' has other dimensions"
    for name in ("ras", "axis"):
        if lazy[name].values.tolist() != row[name].values.tolist():
            return f"other {name} coordinate"
    stored = [str(v) for v in lazy["label"].values]
    if len(set(stored)) != len(stored) or not set(str(v) for v in row["label"].values) <= set(stored):
        return "new labels"
    studies = lazy["study"].values
    if not studies.size or not stats.study > str(studies[-1]):
        return "the study sorts before the last stored one (or is stored)"
    for name in ("study", "source", "modality", "model"):
        kind, value = lazy[name].dtype, str(row[name].values[0])
        if kind.kind != "U" or len(value) > kind.itemsize // 4:
            return f"a longer '{name}' than the store holds"
    return None


def _label_id_max(array, store: Path) -> np.ndarray:
    """Each label's highest ``label_id`` over the stored studies (the store's label order sorts on it), read a chunk at a time."""
    highest = np.full(array.shape[1], -1, dtype=np.int64)
    step = array.chunks[0]
    try:
        for start in range(0, array.shape[0], step):
            highest = np.maximum(highest, np.asarray(array[start : start + step]).max(axis=0))
    except (FileNotFoundError, PermissionError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a chunk that does not decode: damage, as open_stats says
        raise stats_store.damaged(store, f"{type(exc).__name__}: {exc}") from exc
    return highest


def _normalised(ds):
    """Strings fixed-width (``<U{n}``, :func:`pipeline.stats_store.fixed_width_strings`); integer and
    boolean variables that an outer join turned into floats back to their type, with their fill."""
    ds = stats_store.fixed_width_strings(ds)
    for name, fill in FILL.items():
        if name in ds and ds[name].dtype.kind == "f" and not isinstance(fill, float):
            ds[name] = ds[name].fillna(fill).astype(type(fill) if not isinstance(fill, bool) else bool)
    return ds


def open_stats(store: str | Path):
    """The statistics Dataset of a ``stats.zarr``: a consistent snapshot in memory (it is small),
    read under the store's shared lock (:func:`pipeline.stats_store.open_stats`)."""
    return stats_store.open_stats(store)


def volumes_by_label(store: str | Path, label_name: str):
    """Example query: ``volume_ml`` of ``label_name`` per study (a DataArray over ``study``).

    Reads that label's ``volume_ml`` and ``segmented`` only (a store of 50,000 studies x 118 labels is ~1 GB).

    >>> volumes_by_label("out/stats.zarr", "liver").to_series()   # doctest: +SKIP
    """
    from pipeline.errors import InputError

    def part(ds):
        if label_name not in set(ds.label.values.tolist()):
            known = ", ".join(sorted(str(v) for v in ds.label.values))
            raise InputError(store, f"no label named {label_name!r}", f"known labels: {known}")
        return ds[["volume_ml", "segmented"]].sel(label=[label_name])

    ds = stats_store.open_stats(store, part).sel(label=label_name)
    return ds["volume_ml"].where(ds["segmented"])


def stored_studies(store: str | Path) -> list[str]:
    """The studies in the ``stats.zarr`` at ``store``, in store order (its ``study`` coordinate only, under the shared lock)."""
    return stats_store.open_stats(store, lambda ds: ds.drop_vars(list(ds.data_vars)))["study"].values.tolist()
