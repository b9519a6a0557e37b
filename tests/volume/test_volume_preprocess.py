"""Grid mapping (reorientation, resampling, logits back to native), intensity maps and the zarr volume store."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.errors import ModelSpecError
from pipeline.volume.preprocess import (
    intensity_for,
    labels_to_native,
    logits_to_native,
    parse_orientation,
    plan_grid,
    reorient,
    resample_axis,
    to_model,
    unreorient,
)
from pipeline.volume.store import open_volume_store, write_volume_store
from pipeline.volume.volume import index_to_world, orientation_code

CODES = ["RAS", "LAS", "LPS", "PIR", "SLA"]


def _world_of_all_voxels(shape, affine):
    idx = np.argwhere(np.ones(shape, dtype=bool))
    return idx, index_to_world(affine, idx)


@pytest.mark.parametrize("source", ["RAS", "LPS", "LAS", "IRP", "oblique"])
@pytest.mark.parametrize("target", CODES)
def test_reorientation_is_exact_and_keeps_world_positions(vh, source, target):
    shape = (5, 6, 7)
    affine = vh.oblique_affine() if source == "oblique" else vh.axis_affine(source)
    grid = plan_grid(shape, affine, orientation=target)
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    moved = reorient(data, grid)
    assert moved.shape == grid.oriented_shape and orientation_code(grid.oriented_affine) == target
    idx, world = _world_of_all_voxels(shape, affine)
    back = np.linalg.inv(grid.oriented_affine) @ np.c_[world, np.ones(len(world))].T
    new_idx = np.rint(back[:3].T[:, ::-1]).astype(int)
    np.testing.assert_allclose(back[:3].T[:, ::-1], new_idx, atol=1e-9)  # same voxel centres, no interpolation
    assert np.array_equal(moved[tuple(new_idx.T)], data[tuple(idx.T)])
    assert np.array_equal(unreorient(moved, grid), data)
    stacked = np.stack([data, -data])
    assert np.array_equal(unreorient(reorient(stacked, grid), grid), stacked)
    assert not grid.resampled


def test_no_orientation_keeps_native_axes(vh):
    grid = plan_grid((5, 6, 7), vh.axis_affine("LPS"))
    assert not grid.reoriented and grid.oriented_shape == (5, 6, 7)
    np.testing.assert_array_equal(grid.oriented_affine, vh.axis_affine("LPS"))


def test_bad_orientation_code():
    with pytest.raises(ModelSpecError, match="RAR"):
        parse_orientation("RAR")
    assert parse_orientation("lps") == "LPS"


def test_resample_axis_equals_scipy_linear():
    data = np.random.default_rng(1).random((7, 9, 11)).astype(np.float32)
    coords = [np.linspace(-0.7, 6.9, 13), np.linspace(0.3, 8.0, 5), np.array([0.0, 2.25, 10.0, 11.5])]
    out = data
    for axis, c in enumerate(coords):
        out = resample_axis(out, axis, c)
    grid = np.meshgrid(*coords, indexing="ij")
    expected = ndimage.map_coordinates(data.astype(np.float64), grid, order=1, mode="nearest")
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_model_grid_spacing_affine_and_centre(vh):
    shape, affine = (30, 101, 122), vh.axis_affine("LPS", (3.0, 3.0, 3.0))
    grid = plan_grid(shape, affine, orientation="RAS", spacing=(2.0, 1.5, 4.0))
    assert grid.resampled and grid.model_shape == (45, 202, 92)  # round(n * 3 / new)
    norms = np.linalg.norm(grid.model_affine[:3, :3], axis=0)
    np.testing.assert_allclose(norms, [4.0, 1.5, 2.0])  # (x, y, z) columns
    centre = lambda shp, aff: index_to_world(aff, (np.array(shp) - 1) / 2)  # noqa: E731
    np.testing.assert_allclose(centre(grid.model_shape, grid.model_affine), centre(shape, affine), atol=1e-9)


def test_to_model_keeps_a_linear_ramp_and_logits_come_back_on_the_native_grid(vh):
    # a linear ramp in world coordinates is reproduced exactly by trilinear interpolation (inside the grid)
    shape, affine = (12, 20, 16), vh.oblique_affine((1.0, 1.2, 2.0))
    idx, world = _world_of_all_voxels(shape, affine)
    ramp = (world @ np.array([0.3, -0.2, 0.1])).reshape(shape).astype(np.float32)
    grid = plan_grid(shape, affine, orientation="RAS", spacing=(1.0, 0.8, 0.7))
    model = to_model(ramp, grid)
    m_idx, m_world = _world_of_all_voxels(grid.model_shape, grid.model_affine)
    expected = (m_world @ np.array([0.3, -0.2, 0.1])).reshape(grid.model_shape)
    inside = np.ones(grid.model_shape, bool)
    for axis in range(3):
        o = grid.model_to_oriented(axis, np.arange(grid.model_shape[axis]))
        keep = (o >= 0) & (o <= grid.oriented_shape[axis] - 1)
        inside &= np.expand_dims(keep, [a for a in range(3) if a != axis])
    np.testing.assert_allclose(model[inside], expected[inside], atol=1e-3)
    # logits = (ramp, -ramp) -> labels 0 where ramp > 0: comes back on exactly the native grid
    logits = np.stack([model, -model])
    labels = logits_to_native(logits, grid, (5, 7), "uint8", slab_bytes=1)  # slab of one slice: exercises slabbing
    assert labels.shape == shape and labels.dtype == np.uint8
    agree = labels == np.where(ramp > 0, 5, 7)
    assert agree.mean() > 0.99 and agree[np.abs(ramp) > 0.5].all()


def test_logits_without_resampling_round_trip_exactly(vh):
    shape, affine = (6, 8, 10), vh.axis_affine("PIR")
    grid = plan_grid(shape, affine, orientation="RAS", spacing=None)
    truth = np.random.default_rng(2).integers(0, 3, shape)
    logits = np.stack([(truth == k).astype(np.float32) for k in range(3)])
    moved = reorient(logits, grid)
    assert np.array_equal(logits_to_native(moved, grid, (0, 1, 2), "uint8"), truth)
    assert np.array_equal(labels_to_native(reorient(truth, grid), grid), truth)


def test_intensity_maps_match_monai(vh, tmp_path):
    from monai.transforms import NormalizeIntensity, ScaleIntensityRange

    hu = vh.ct_crop((6, 20, 24)).astype(np.float32)
    ct = vh.per_voxel_spec(tmp_path, normalize={"kind": "window", "min": -200, "max": 300})
    got = intensity_for(ct, hu)(hu[None])
    expected = ScaleIntensityRange(a_min=-200, a_max=300, b_min=0.0, b_max=1.0, clip=True)(hu[None])
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-6)
    mr_data = hu - hu.min()  # some exact zeros = background
    mr = vh.per_voxel_spec(tmp_path, normalize={"kind": "zscore"})
    got = intensity_for(mr, mr_data)(mr_data[None])
    fg = mr_data[mr_data != 0]
    expected = NormalizeIntensity(subtrahend=float(fg.mean()), divisor=float(fg.std()))(mr_data[None])
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-5, atol=1e-5)
    half = intensity_for(mr, mr_data)(mr_data[None, :3])  # statistics fixed once: a region gives the same values
    np.testing.assert_array_equal(half, got[:, :3])


def test_volume_store_round_trip_and_chunks(tmp_path, vh):
    data = np.random.default_rng(3).random((30, 101, 122)).astype(np.float32)
    affine = vh.oblique_affine()
    store = write_volume_store(data, tmp_path / "v.zarr", affine=affine, block=(16, 64, 128), attrs={"source": "x.nii.gz"})
    assert store.array.chunks == (1, 16, 64, 122) and store.array.metadata.zarr_format == 3
    again = open_volume_store(tmp_path / "v.zarr")
    assert np.array_equal(again.array[0], data) and again.shape == (30, 101, 122)
    np.testing.assert_array_equal(again.affine, affine)
    assert again.spacing == pytest.approx((2.5, 1.2, 1.5))
    assert again.array.attrs["axes"] == ["c", "z", "y", "x"] and again.array.attrs["source"] == "x.nii.gz"
    assert again.array.attrs["orientation"] == "".join(nib.aff2axcodes(affine))
