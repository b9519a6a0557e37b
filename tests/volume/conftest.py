"""Helpers for the volume tests: real NIfTI/DICOM files built in tmp_path, per-voxel models, shared data.

Arrays are ``(Z, Y, X)``; affines map ``(x, y, z, 1)`` to RAS mm (see pipeline/volume/volume.py).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from models.spec import ModelSpec, spec_from_dict

MED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "med"

# A per-voxel model on window-normalised CT (x = clip((HU + 1000) / 2000, 0, 1)):
# logits (0, 10 x - 4.5031, 20 x - 10.0047) -> 0 below ~-99.4 HU, 1 up to ~100.3 HU, 2 above.
# Thresholds fall between integer HU values, so float rounding can never flip a voxel.
PV_WEIGHT = (0.0, 10.0, 20.0)
PV_BIAS = (0.0, -4.5031, -10.0047)
# Two classes (air / body) split at ~-499.4 HU: large smooth regions, for the resampling test.
BODY_WEIGHT = (0.0, 10.0)
BODY_BIAS = (0.0, -2.50031)


def med_file(name: str) -> Path:
    path = MED / name
    if not path.is_file():
        pytest.skip(f"shared test data {path} absent (see ../shared/data/README.md)")
    return path


def per_voxel_answer(hu: np.ndarray, weight=PV_WEIGHT, bias=PV_BIAS) -> np.ndarray:
    """What the per-voxel model says for intensities ``hu`` (any shape), computed in float64 numpy."""
    x = np.clip((np.asarray(hu, dtype=np.float64) + 1000.0) / 2000.0, 0.0, 1.0)
    logits = np.stack([w * x + b for w, b in zip(weight, bias)])
    return np.argmax(logits, axis=0).astype(np.uint8)


def per_voxel_model(weight=PV_WEIGHT, bias=PV_BIAS) -> torch.nn.Module:
    net = torch.nn.Conv3d(1, len(weight), kernel_size=1)
    with torch.no_grad():
        net.weight[:] = torch.tensor(weight, dtype=torch.float32).reshape(-1, 1, 1, 1, 1)
        net.bias[:] = torch.tensor(bias, dtype=torch.float32)
    return net.eval()


def per_voxel_spec(tmp_path: Path, *, n_classes: int = 3, **overrides) -> ModelSpec:
    """An import-path spec (``torch.nn:Conv3d``, kernel 1) with safetensors weights of the per-voxel model."""
    from safetensors.torch import save_file

    weight, bias = (PV_WEIGHT, PV_BIAS) if n_classes == 3 else (BODY_WEIGHT, BODY_BIAS)
    net = per_voxel_model(weight, bias)
    checkpoint = tmp_path / f"pv{n_classes}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(checkpoint))
    names = ["background", "soft", "dense"] if n_classes == 3 else ["air", "body"]
    colors = ["#000000", "#e31a1c", "#1f78b4"]
    raw = {
        "name": f"per-voxel-{n_classes}",
        "task": "volume",
        "architecture": "torch.nn:Conv3d",
        "params": {"in_channels": 1, "out_channels": n_classes, "kernel_size": 1},
        "in_channels": 1,
        "classes": [{"id": i, "name": n, "color": c} for i, n, c in zip(range(n_classes), names, colors)],
        "window": [16, 32, 32],
        "overlap": 0.25,
        "normalize": {"kind": "window", "min": -1000, "max": 1000},
        "checkpoint": str(checkpoint),
        **overrides,
    }
    return spec_from_dict(raw, source=tmp_path / "spec.yaml")


def oblique_affine(spacing_xyz=(1.5, 1.2, 2.5), origin=(-40.0, 25.0, -60.0)) -> np.ndarray:
    """A rotated (about an axis mixing all three) RAS-like affine with anisotropic voxels."""
    axis = np.array([1.0, 2.0, 3.0])
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(25.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing_xyz)
    affine[:3, 3] = origin
    return affine


def axis_affine(code: str, spacing_xyz=(1.5, 1.2, 2.5), origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """An axis-aligned affine whose (x, y, z) axes point along ``code`` (e.g. "LPS")."""
    signs = {"R": 1, "L": -1, "A": 1, "P": -1, "S": 1, "I": -1}
    axis_of = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for i, c in enumerate(code):
        affine[axis_of[c], i] = signs[c] * spacing_xyz[i]
    affine[:3, 3] = origin
    return affine


def write_nifti(path: Path, data_zyx: np.ndarray, affine: np.ndarray, *, qcode: int = 1, scode: int = 1, dtype=None) -> Path:
    """Save ``(Z, Y, X)`` data as NIfTI-1 with the given qform/sform codes."""
    img = nib.Nifti1Image(np.asarray(data_zyx).T, affine=None)
    if dtype is not None:
        img.set_data_dtype(dtype)
    img.set_sform(affine, code=scode)
    img.set_qform(affine, code=qcode)
    nib.save(img, path)
    return path


def ct_crop(shape=(12, 40, 48)) -> np.ndarray:
    """A real CT crop (HU, int16) ``(Z, Y, X)`` from the shared abdominal CT, centred on the body."""
    img = nib.load(med_file("ct_abdomen_small.nii.gz"))
    hu = np.asarray(img.dataobj).T  # (30, 101, 122)
    z0, y0, x0 = ((s - c) // 2 for s, c in zip(hu.shape, shape))
    return np.ascontiguousarray(hu[z0 : z0 + shape[0], y0 : y0 + shape[1], x0 : x0 + shape[2]]).astype(np.int16)


def _ds(value: float) -> str:
    return f"{value:.10g}"


def write_dicom_series(
    folder: Path,
    hu_zyx: np.ndarray,
    affine: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = -2048.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_uid: str | None = None,
    description: str = "segpipe test CT",
    transfer_syntax: str | None = None,
    skip: tuple[int, ...] = (),
    name_order: np.ndarray | None = None,
) -> Path:
    """Write a single-frame CT series (one file per z) whose geometry is ``affine`` (RAS, nibabel convention).

    Stored values are ``(HU - intercept) / slope`` as uint16 (must be integers). Files are named in
    ``name_order`` (a permutation of z) so that the reader has to sort them. ``skip`` drops slices.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    stored = (np.asarray(hu_zyx, dtype=np.float64) - intercept) / slope
    assert np.all(stored == np.round(stored)) and stored.min() >= 0 and stored.max() < 65536, "HU must map to uint16 integers"
    stored = stored.astype(np.uint16)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    col_spacing = np.linalg.norm(lps[:3, 0])
    row_spacing = np.linalg.norm(lps[:3, 1])
    row_cos = lps[:3, 0] / col_spacing
    col_cos = lps[:3, 1] / row_spacing
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    n = stored.shape[0]
    order = np.arange(n) if name_order is None else np.asarray(name_order)
    today = datetime.date(2024, 1, 2).strftime("%Y%m%d")
    for z in range(n):
        if z in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{int(order[z]):04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.PatientName = "Test^Phantom"
        ds.PatientID = "SEG001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.ReferringPhysicianName = ""
        ds.AccessionNumber = "A1"
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = int(order[z]) + 1
        ds.Manufacturer = "segpipe-tests"
        ds.SeriesDescription = description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + z * lps[:3, 2]]
        ds.PixelSpacing = [_ds(row_spacing), _ds(col_spacing)]
        ds.SliceThickness = _ds(float(np.linalg.norm(lps[:3, 2])))
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleType = "HU"
        ds.PixelData = stored[z].tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax, encoding_plugin="pylibjpeg")
        ds.save_as(path, enforce_file_format=True)
    return folder


@pytest.fixture(scope="session")
def pv_model() -> torch.nn.Module:
    return per_voxel_model()


@pytest.fixture(scope="session")
def vh():
    """This module's helpers (tests run with --import-mode=importlib, so they cannot import conftest)."""
    import sys

    return sys.modules[__name__]
