"""The ``segment-volumes`` flow on enhanced (multi-frame) DICOM: a series folder holding one enhanced
object is a study like any other, an enhanced file given by itself too, and a bad object (two temporal
positions) is reported while the others finish.

The objects are made by highdicom's legacy converter from a real single-frame CT series (shared data).
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sequence import Sequence

from flows.volumes import segment_volumes

pytestmark = pytest.mark.usefixtures("prefect_server")
hd = pytest.importorskip("highdicom")

CLASSES = [(0, "background"), (1, "soft"), (2, "bone")]
WEIGHT = np.array([[0.0], [1.0], [2.0]])  # logits: background 0, soft x - 100, bone 2x - 400 (x in HU)
BIAS = np.array([0.0, -100.0, -400.0])


def _volume_helpers():
    """tests/volume/conftest.py (the DICOM series writer and the shared CT crop), loaded by path."""
    spec = importlib.util.spec_from_file_location("volume_helpers", Path(__file__).resolve().parents[1] / "volume" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _enhanced(series: Path, path: Path) -> Path:
    sources = [pydicom.dcmread(p) for p in sorted(series.iterdir())]
    obj = hd.legacy.LegacyConvertedEnhancedCTImage(sources, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj.save_as(path)
    return path


def _two_temporal_positions(path: Path) -> Path:
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    groups = []
    for k in (1, 2):
        for item in ds.PerFrameFunctionalGroupsSequence:
            item = copy.deepcopy(item)
            item.FrameContentSequence[0].TemporalPositionIndex = k
            groups.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    ds.NumberOfFrames = 2 * frames.shape[0]
    ds.PixelData = np.concatenate([frames, frames]).tobytes()
    ds.save_as(path)
    return path


def test_enhanced_studies_in_a_flow_run(tmp_path, pointwise_spec):
    vh = _volume_helpers()
    hu = vh.ct_crop((6, 20, 24)).astype(np.float64)
    series = vh.write_dicom_series(tmp_path / "single", hu, vh.oblique_affine(), name_order=np.array([3, 0, 5, 1, 4, 2]))
    studies = tmp_path / "studies"
    _enhanced(series, studies / "mf-good" / "object.dcm")
    _two_temporal_positions(_enhanced(series, studies / "mf-dynamic" / "object.dcm"))
    alone = _enhanced(series, tmp_path / "alone" / "scan.dcm")
    spec = pointwise_spec(tmp_path / "model", task="volume", weight=WEIGHT, bias=BIAS, classes=CLASSES, window=[4, 8, 8])
    out = tmp_path / "out"
    report = segment_volumes(studies=str(studies), model=str(spec), out=str(out), device="cpu")
    assert [o.name for o in report.outputs] == ["mf-good"]
    assert [f.item for f in report.failures] == [str((studies / "mf-dynamic").resolve())]
    assert "2 temporal positions (TemporalPositionIndex 1, 2)" in report.failures[0].message
    listed = segment_volumes(studies=[str(alone)], model=str(spec), out=str(out), device="cpu")
    assert [o.name for o in listed.outputs] == ["scan"] and not listed.failures
    expected = np.where(hu > 300, 2, np.where(hu > 100, 1, 0))
    for name in ("mf-good", "scan"):
        img = nib.load(str(out / f"{name}.labels.nii.gz"))
        np.testing.assert_allclose(img.affine, vh.oblique_affine(), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(img.dataobj).T, expected)
        assert (out / f"{name}.seg.dcm").is_file()
