"""The CT phantom: determinism, labels, Hounsfield ranges, non-RAS geometry, anatomy on the right side."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipeline.demo.phantom import (
    BACKGROUND,
    BODY,
    KIDNEYS,
    LABEL_NAMES,
    LIVER,
    LUNGS,
    SPINE,
    SPLEEN,
    synthetic_ct,
    write_ct_nifti,
)


@pytest.fixture(scope="module")
def phantom():
    return synthetic_ct(3)


def test_deterministic_and_seed_dependent(phantom):
    hu, labels, affine = phantom
    hu2, labels2, affine2 = synthetic_ct(3)
    assert np.array_equal(hu, hu2) and np.array_equal(labels, labels2) and np.array_equal(affine, affine2)
    assert not np.array_equal(labels, synthetic_ct(4)[1])


def test_shapes_dtypes_and_all_labels(phantom):
    hu, labels, affine = phantom
    assert hu.shape == labels.shape == (64, 96, 96)
    assert hu.dtype == np.int16 and labels.dtype == np.uint8 and affine.shape == (4, 4)
    assert np.unique(labels).tolist() == list(range(len(LABEL_NAMES)))


def test_affine_is_non_ras_and_anisotropic(phantom):
    _, _, affine = phantom
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    assert nib.aff2axcodes(affine) != ("R", "A", "S")
    assert np.allclose(nib.affines.voxel_sizes(affine), (3.5, 3.5, 5.0))


def _core(labels: np.ndarray, label: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(labels == label, iterations=2)


@pytest.mark.parametrize(
    ("label", "low", "high"),
    [(BACKGROUND, -1010, -990), (LUNGS, -900, -800), (LIVER, 45, 75), (SPLEEN, 35, 65), (SPINE, 300, 1000)],
)
def test_hounsfield_ranges(phantom, label, low, high):
    hu, labels, _ = phantom
    mask = labels == label if label in (BACKGROUND, SPINE) else _core(labels, label)
    assert low <= float(hu[mask].mean()) <= high


def test_body_has_fat_and_soft_tissue_and_noise(phantom):
    hu, labels, _ = phantom
    body = hu[labels == BODY]
    assert (np.abs(body + 100) < 40).mean() > 0.1  # fat around -100
    assert (np.abs(body - 40) < 30).mean() > 0.1  # soft tissue around 40
    liver_core = hu[_core(labels, LIVER)].astype(np.float64)
    assert 8 < liver_core.std() < 30  # realistic noise, not a flat phantom
    assert hu.min() >= -1024 and hu.max() <= 3071
    kidney = hu[labels == KIDNEYS]
    assert kidney.max() > 100  # enhancing cortex


def test_anatomy_sides_in_world_coordinates(phantom):
    """Liver on the patient's right, spleen on the left, spine posterior, lungs superior (RAS mm)."""
    _, labels, affine = phantom

    def centroid(label: int) -> np.ndarray:
        z, y, x = np.nonzero(labels == label)
        return (affine @ np.array([x.mean(), y.mean(), z.mean(), 1.0]))[:3]

    liver, spleen, spine, lungs, kidneys = (centroid(k) for k in (LIVER, SPLEEN, SPINE, LUNGS, KIDNEYS))
    assert liver[0] > 20 and spleen[0] < -20  # R > 0 is the patient's right
    assert spine[1] < kidneys[1] < liver[1]  # A: spine most posterior
    assert lungs[2] > liver[2] > kidneys[2]  # S: lungs above liver above kidneys


def test_nifti_roundtrip_keeps_grid(tmp_path, phantom):
    hu, labels, affine = phantom
    path = write_ct_nifti(tmp_path / "ct.nii.gz", hu, affine)
    image = nib.load(str(path))
    assert image.shape == (96, 96, 64)  # (x, y, z)
    assert np.allclose(image.affine, affine)
    assert image.header["qform_code"] == 1 and image.header["sform_code"] == 1
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert image.get_data_dtype() == np.int16
    assert np.array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), hu)
    label_img = nib.load(str(write_ct_nifti(tmp_path / "labels.nii.gz", labels, affine)))
    assert np.array_equal(np.asarray(label_img.dataobj).T, labels)


def test_too_small_is_refused():
    with pytest.raises(ValueError, match="too small"):
        synthetic_ct(0, (8, 16, 16))
