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
Re-running a study replaces its row; the store is rewritten to a temporary folder and swapped in
under a lock on its folder (:mod:`pipeline.stats_store`), so readers never see a half-written store;
:func:`open_stats` reads a consistent snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import stats_store
from pipeline.volume.stats import LabelStats, StudyStats

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


def merge_into_store(stats: StudyStats, store: str | Path) -> Path:
    """Add (or replace) the row of ``stats.study`` in the ``stats.zarr`` at ``store``.

    The new store is written next to the old one and swapped in under the exclusive lock of
    :mod:`pipeline.stats_store`; an interrupted swap is recovered on the next call.
    """
    import xarray as xr

    store = Path(store)
    with stats_store.lock(store, "exclusive"):
        stats_store.recover(store)
        rows = [_study_dataset(stats)]
        if store.exists():
            existing = stats_store.open_stats(store)  # this thread holds the lock already: read as is
            if "study" not in existing.dims or "label" not in existing.dims:
                from pipeline.errors import InputError

                problem = f"holds other statistics (dims {dict(existing.sizes)}), not study x label volume statistics"
                raise InputError(store, problem, "write volume results to another --out folder")
            if stats.study in set(existing.study.values.tolist()):
                existing = existing.drop_sel(study=stats.study)
            if existing.sizes.get("study", 0):
                rows.insert(0, _normalised(existing))
        merged = xr.concat(rows, dim="study", join="outer", fill_value=FILL, data_vars="all", coords="different", compat="equals")
        merged = _normalised(merged)
        merged = merged.sortby([merged["label_id"].max("study"), merged["label"]]).sortby("study")
        merged["volume_ml"] = merged["volume_ml"].where(merged["segmented"])  # NaN also in rows of stores written with 0.0
        stats_store.replace_store(_annotated(merged), store)
    return store


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

    >>> volumes_by_label("out/stats.zarr", "liver").to_series()   # doctest: +SKIP
    """
    from pipeline.errors import InputError

    ds = open_stats(store)
    if label_name not in set(ds.label.values.tolist()):
        known = ", ".join(sorted(str(v) for v in ds.label.values))
        raise InputError(store, f"no label named {label_name!r}", f"known labels: {known}")
    return ds["volume_ml"].sel(label=label_name).where(ds["segmented"].sel(label=label_name))
