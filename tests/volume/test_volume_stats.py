"""Per-label statistics against an independent numpy computation, and the stats.zarr store."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from pipeline.errors import InputError
from pipeline.volume.stats import (
    label_statistics,
    read_stats_json,
    study_statistics,
    write_stats_json,
)
from pipeline.volume.stats_zarr import merge_into_store, volumes_by_label


def _expected(labels_xyz: np.ndarray, image_xyz: np.ndarray, affine: np.ndarray, label_id: int) -> dict:
    """Independent computation on nibabel's (i, j, k) arrays (no shared code with pipeline.volume.stats)."""
    from scipy import ndimage

    mask = labels_xyz == label_id
    values = image_xyz[mask].astype(np.float64)
    ijk = np.argwhere(mask)
    world = (affine @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    return {
        "voxel_count": int(mask.sum()),
        "volume_ml": mask.sum() * voxel_ml,
        "mean": values.mean(),
        "std": values.std(),
        "min": values.min(),
        "max": values.max(),
        "median": np.median(values),
        "p5": np.percentile(values, 5),
        "p95": np.percentile(values, 95),
        "centroid": world.mean(axis=0),
        "bbox_min_zyx": tuple(ijk.min(axis=0)[::-1]),
        "bbox_max_zyx": tuple(ijk.max(axis=0)[::-1]),
        "components": ndimage.label(mask, structure=np.ones((3, 3, 3)))[1],
        "touches": bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any()),
    }


def _check(stat, exp):
    assert stat.voxel_count == exp["voxel_count"]
    assert stat.volume_ml == pytest.approx(exp["volume_ml"], rel=1e-12)
    for key in ("mean", "std", "min", "max", "median", "p5", "p95"):
        assert getattr(stat, f"intensity_{key}") == pytest.approx(exp[key], rel=1e-6, abs=1e-6), key
    np.testing.assert_allclose(stat.centroid_ras, exp["centroid"], atol=1e-6)
    assert stat.bbox_min == exp["bbox_min_zyx"] and stat.bbox_max == exp["bbox_max_zyx"]
    assert stat.n_components == exp["components"] and stat.touches_border == exp["touches"]


@pytest.fixture(scope="module")
def ct_case(vh):
    img = nib.load(vh.med_file("ct_abdomen_small.nii.gz"))
    seg = nib.load(vh.med_file("ct_abdomen_small_totalseg.nii.gz"))
    names = json.loads(vh.med_file("totalseg_total_labels.json").read_text())
    classes = [(0, "background")] + [(int(k), v) for k, v in names.items()]
    hu = np.asarray(img.dataobj)
    labels = np.asarray(seg.dataobj)
    stats = study_statistics("ct_abdomen_small", labels.T, hu.T.astype(np.float32), img.affine, classes, modality="CT", model="totalseg")
    return img, hu, labels, stats


def test_ct_totalsegmentator_labels_against_numpy(ct_case):
    img, hu, labels, stats = ct_case
    present = [int(v) for v in np.unique(labels) if v != 0]
    assert len(present) > 20
    by_id = {s.label_id: s for s in stats.labels}
    for label_id in present:
        _check(by_id[label_id], _expected(labels, hu, img.affine, label_id))
    liver = stats.label("liver")
    assert liver.label_id == 5 and liver.voxel_count == int((labels == 5).sum())
    assert liver.volume_ml == pytest.approx((labels == 5).sum() * 27 / 1000)  # 3 mm isotropic
    assert 30 < liver.intensity_mean < 80  # liver parenchyma in HU
    absent = next(s for s in stats.labels if s.label_id not in present and s.label_id != 0)
    assert absent.voxel_count == 0 and np.isnan(absent.intensity_mean) and absent.bbox_min == (-1, -1, -1)
    assert sum(s.voxel_count for s in stats.labels) == labels.size


def test_mr_lesion_on_las_grid(vh):
    img = nib.load(vh.med_file("mr_brain_t1.nii.gz"))
    mask = nib.load(vh.med_file("mr_brain_t1_lesion.nii.gz"))
    image, lesion = np.asarray(img.dataobj), np.asarray(mask.dataobj)
    (stat,) = label_statistics(lesion.T, image.T.astype(np.float32), img.affine, [(1, "lesion")])
    assert stat.voxel_count == 4137
    _check(stat, _expected(lesion, image, img.affine, 1))
    assert stat.volume_ml == pytest.approx(4137 * 0.78125 * 0.78125 * 6.5 / 1000)


def test_oblique_volume_uses_the_determinant(vh):
    affine = vh.oblique_affine((1.5, 1.2, 2.5))
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 1:4, 2:5] = 2
    (stat,) = label_statistics(labels, np.ones(labels.shape, np.float32), affine, [(2, "box")])
    assert stat.volume_ml == pytest.approx(18 * 1.5 * 1.2 * 2.5 / 1000)
    np.testing.assert_allclose(stat.centroid_ras, affine[:3, :3] @ [3.0, 2.0, 1.5] + affine[:3, 3])
    assert stat.n_components == 1 and not stat.touches_border


def test_26_connectivity(vh):
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[1, 1, 1] = labels[2, 2, 2] = 1  # corner neighbours: one component with 26-connectivity
    labels[4, 0, 0] = 1  # on the border, separate
    (stat,) = label_statistics(labels, np.zeros(labels.shape, np.float32), np.eye(4), [(1, "a")])
    assert stat.n_components == 2 and stat.touches_border


def test_json_round_trip_and_store_merge_replace(ct_case, tmp_path):
    _, _, _, stats = ct_case
    path = write_stats_json(stats, tmp_path / "ct.stats.json")
    again = read_stats_json(path)
    assert again.label("liver") == stats.label("liver")
    raw = json.loads(path.read_text())
    absent = next(lab for lab in raw["labels"] if lab["voxel_count"] == 0)
    assert absent["intensity_mean"] is None  # NaN written as JSON null
    store = tmp_path / "stats.zarr"
    merge_into_store(stats, store)
    other = type(stats)(**{**stats.__dict__, "study": "second", "labels": stats.labels[:6]})
    merge_into_store(other, store)
    merge_into_store(stats, store)  # re-running a study replaces its row
    ds = xr.open_zarr(store).load()
    assert list(ds.study.values) == ["ct_abdomen_small", "second"]
    assert {"volume_ml", "voxel_count", "intensity_mean", "intensity_std"} <= set(ds.data_vars)
    assert ds.volume_ml.dims == ("study", "label") and ds.voxel_count.dims == ("study", "label")
    assert ds.volume_ml.sel(study="ct_abdomen_small", label="liver").item() == pytest.approx(stats.label("liver").volume_ml)
    assert ds.voxel_count.sel(study="second", label="liver").item() == stats.label("liver").voxel_count
    not_in_second = stats.labels[10].name
    assert not bool(ds.segmented.sel(study="second", label=not_in_second).item())
    assert ds.voxel_count.sel(study="second", label=not_in_second).item() == 0
    assert list(ds.label.values[:3]) == ["background", "spleen", "kidney_right"]  # ordered by label id
    liver = volumes_by_label(store, "liver")
    assert liver.dims == ("study",) and liver.sel(study="second").item() == pytest.approx(stats.label("liver").volume_ml)
    assert np.isnan(volumes_by_label(store, not_in_second).sel(study="second").item())
    with pytest.raises(InputError, match="no label named 'livr'"):
        volumes_by_label(store, "livr")
    assert not list(tmp_path.glob(".stats.zarr*"))  # no temporary stores left behind


def test_store_of_another_kind_is_not_overwritten(ct_case, tmp_path):
    store = tmp_path / "stats.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata is not in the v3 spec
        xr.Dataset({"area_m2": (("region", "class"), np.ones((2, 2)))}).to_zarr(store, zarr_format=3, consolidated=True)
    with pytest.raises(InputError, match="not study x label"):
        merge_into_store(ct_case[3], store)
    assert "area_m2" in xr.open_zarr(store)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.uint16, np.int32, np.float32])
def test_intensity_summary_equals_numpy(dtype):
    """The histogram path for integer images gives numpy's mean, min, max and percentiles exactly."""
    from pipeline.volume.stats import intensity_summary

    rng = np.random.default_rng(int(np.dtype(dtype).itemsize))
    for n in (1, 2, 7, 20, 1001, 30000):
        values = rng.integers(0 if np.dtype(dtype).kind == "u" else -1024, 250 if dtype == np.uint8 else 3000, size=n).astype(dtype)
        mean, std, lo, hi, pcts = intensity_summary(values)
        assert mean == float(np.mean(values, dtype=np.float64))
        assert (lo, hi) == (float(values.min()), float(values.max()))
        assert pcts == tuple(float(v) for v in np.percentile(values, [5, 50, 95]))
        assert std == pytest.approx(float(np.std(values, dtype=np.float64)), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("shape", [(40, 50), (12, 30, 40)])
def test_component_counts_equal_scipy_full_connectivity(shape):
    from scipy import ndimage

    from pipeline.volume.stats import count_components

    rng = np.random.default_rng(len(shape))
    for density in (0.05, 0.3, 0.6):
        mask = rng.random(shape) < density
        expected = ndimage.label(mask, structure=np.ones((3,) * len(shape), dtype=bool))[1]
        assert count_components(mask) == expected
        assert count_components(np.asfortranarray(mask)) == expected  # NIfTI data often comes Fortran-ordered


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_one_pass_equals_the_per_label_path(seed, monkeypatch):
    """Integer-valued images take the one-sweep path; its figures equal the label-by-label path's
    (seed 3: CT as the reader gives it, float32 holding whole HU values)."""
    import math

    import pipeline.volume.stats as stats_module

    rng = np.random.default_rng(seed)
    shape = (9, 23, 31)
    labels = (rng.random(shape) * [3, 5, 6, 6][seed]).astype(np.uint8)
    labels[:, :4] = 0 if seed != 2 else 1  # a slab of background (seed 2: of label 1); label 9 is never present
    image = rng.integers(-1024, 1500, size=shape).astype([np.int16, np.int32, np.int16, np.float32][seed])
    if seed == 2:
        image = np.abs(image).astype(np.uint16)
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    classes = [(0, "bg"), (1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e"), (9, "absent")]
    fast = stats_module.label_statistics(labels, image, affine, classes)
    monkeypatch.setattr(stats_module, "_all_labels_in_one_pass", lambda *a: None)
    slow = stats_module.label_statistics(labels, image, affine, classes)
    for a, b in zip(fast, slow):
        for field in a.__dataclass_fields__:
            x, y = getattr(a, field), getattr(b, field)
            if isinstance(x, float) and math.isnan(x):
                assert math.isnan(y), (a.name, field)
            elif field == "intensity_std" or (seed == 3 and field.startswith("intensity_")):
                # float32 input: numpy interpolates its percentiles in float32, the histogram in float64
                assert x == pytest.approx(y, rel=1e-6 if seed == 3 else 1e-12), (a.name, field)
            elif field == "centroid_ras":
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-9)
            else:
                assert x == y, (a.name, field, x, y)


@pytest.mark.parametrize("top", [6, 255])
@pytest.mark.parametrize("order", ["C", "F"])
def test_components_per_label_equal_scipy_for_every_value(top, order):
    """One cc3d pass over labels + 1 counts every value's components, the background's too, even
    when the largest value fills the dtype (255 in uint8 must not wrap to 0)."""
    from scipy import ndimage

    from pipeline.volume.stats import _components_per_label

    rng = np.random.default_rng(top)
    labels = rng.choice(np.array([0, 1, 2, top], dtype=np.uint8), size=(20, 24, 18), p=[0.55, 0.2, 0.15, 0.1])
    labels = np.asarray(labels, order=order)
    counts = _components_per_label(labels, top + 1)
    full = np.ones((3, 3, 3), dtype=bool)
    for value in range(top + 1):
        assert counts[value] == ndimage.label(labels == value, structure=full)[1], value


def test_label_the_model_lacks_has_nan_ml_and_units_are_recorded(ct_case, tmp_path):
    _, _, _, stats = ct_case
    store = tmp_path / "stats.zarr"
    merge_into_store(stats, store)
    ds = xr.open_zarr(store).load()
    assert ds.intensity_mean.attrs["units"] == "HU"  # every study is CT
    lacking = stats.labels[10].name
    empty = next(lab for lab in stats.labels[11:] if lab.voxel_count == 0)  # in the model, but no voxel found
    smaller = type(stats)(**{**stats.__dict__, "study": "mr", "modality": "MR", "labels": (*stats.labels[:6], empty)})
    merge_into_store(smaller, store)
    ds = xr.open_zarr(store).load()
    row = ds.sel(study="mr", label=lacking)
    assert int(row.label_id) == -1 and not bool(row.segmented) and int(row.voxel_count) == 0
    assert np.isnan(row.volume_ml.item()) and np.isnan(row.intensity_mean.item())  # not 0.0 mL
    assert ds.volume_ml.sel(study="mr", label=empty.name).item() == 0.0
    assert ds.volume_ml.attrs["units"] == "mL" and ds.centroid_ras.attrs["units"] == "mm"
    assert ds.voxel_volume_mm3.attrs["units"] == "mm3"
    for name in ("intensity_mean", "intensity_std", "intensity_p95"):
        assert ds[name].attrs["units"] == "image units"  # MR joined the CT
    assert "(k, j, i)" in ds.bbox_min.attrs["description"] and list(ds.axis.values) == ["z", "y", "x"]
    assert "not anatomical" in ds.axis.attrs["description"]


def test_stats_dataset_fills_missing_labels_with_nan_ml(ct_case):
    from pipeline.volume.stats_zarr import stats_dataset

    _, _, _, stats = ct_case
    other = type(stats)(**{**stats.__dict__, "study": "second", "labels": stats.labels[:3]})
    ds = stats_dataset([stats, other])
    assert np.isnan(ds.volume_ml.sel(study="second", label=stats.labels[5].name).item())
    assert ds.intensity_mean.attrs["units"] == "HU"
