"""Normalisation is pointwise per channel and matches MONAI's intensity transforms."""

from __future__ import annotations

import numpy as np
import pytest

from models.normalize import NormStats, foreground_stats, normalizer
from models.spec import Normalize
from pipeline.errors import ModelSpecError

RNG = np.random.default_rng(0)
IMAGE = RNG.normal(100, 400, size=(3, 20, 30)).astype(np.float32)

KINDS = [
    Normalize(kind="none"),
    Normalize(kind="meanstd", mean=(1.0, 2.0, 3.0), std=(10.0, 20.0, 30.0)),
    Normalize(kind="meanstd", mean=(5.0,), std=(2.0,)),
    Normalize(kind="window", min=-1000.0, max=1000.0),
    Normalize(kind="scale", factor=1 / 255),
]


@pytest.mark.parametrize("norm", KINDS, ids=lambda n: n.kind)
def test_pointwise_regions_equal_whole(norm):
    """Applied to pieces (as the engine does per region), the result equals the whole-image result."""
    f = normalizer(norm)
    whole = f(IMAGE)
    pieces = np.concatenate([f(IMAGE[:, :7]), f(IMAGE[:, 7:])], axis=1)
    assert whole.dtype == np.float32 and whole.shape == IMAGE.shape
    np.testing.assert_array_equal(whole, pieces)


def test_values():
    np.testing.assert_allclose(normalizer(KINDS[1])(IMAGE)[2], (IMAGE[2] - 3) / 30, rtol=1e-6)
    np.testing.assert_allclose(normalizer(KINDS[4])(np.array([[0, 51, 255]], np.uint8)), [[0, 0.2, 1]], rtol=1e-6)
    np.testing.assert_array_equal(normalizer(KINDS[0])(IMAGE), IMAGE)


def test_window_matches_monai():
    from monai.transforms import ScaleIntensityRange

    ct = RNG.uniform(-1500, 2000, size=(1, 8, 9, 10)).astype(np.float32)
    ours = normalizer(Normalize(kind="window", min=-1000.0, max=1000.0))(ct)
    theirs = ScaleIntensityRange(a_min=-1000, a_max=1000, b_min=0, b_max=1, clip=True)(ct)
    np.testing.assert_allclose(ours, np.asarray(theirs), atol=1e-6)
    assert ours.min() == 0 and ours.max() == 1


def test_zscore_needs_stats_and_matches_monai_nonzero():
    from monai.transforms import NormalizeIntensity

    with pytest.raises(ModelSpecError, match="needs per-image statistics"):
        normalizer(Normalize(kind="zscore"))
    mr = RNG.uniform(0, 500, size=(2, 6, 7, 8)).astype(np.float32)
    mr[:, :2] = 0  # background
    stats = foreground_stats(mr)
    assert isinstance(stats, NormStats) and len(stats.mean) == 2
    ours = normalizer(Normalize(kind="zscore"), stats)(mr)
    theirs = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(mr))
    fg = mr != 0
    np.testing.assert_allclose(ours[fg], theirs[fg], rtol=1e-4, atol=1e-4)  # MONAI leaves background at 0


def test_channel_count_mismatch_is_an_error():
    f = normalizer(Normalize(kind="meanstd", mean=(0.0, 0.0), std=(1.0, 1.0)))
    with pytest.raises(ModelSpecError, match="2 mean/std values for an image with 3 channels"):
        f(IMAGE)


@pytest.mark.parametrize("norm", KINDS, ids=lambda n: n.kind)
def test_normalizer_pickles(norm):
    """Dask workers receive the normaliser pickled; it must survive the trip unchanged."""
    import pickle

    f = normalizer(norm)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(f))(IMAGE), f(IMAGE))


@pytest.mark.parametrize("norm", KINDS, ids=lambda n: n.kind)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_into_a_channels_last_buffer_equals_calling(norm, dtype):
    """``into`` (what the engine uses to fill its channels-last read buffer) gives bit-identical values."""
    f = normalizer(norm)
    raw = np.clip(IMAGE, -30000, 30000).astype(dtype)
    buffer = np.full((IMAGE.shape[1], IMAGE.shape[2], IMAGE.shape[0]), np.nan, dtype=np.float32)  # (Y, X, C) memory
    f.into(raw, np.moveaxis(buffer, -1, 0))  # written through a (C, Y, X) view
    np.testing.assert_array_equal(np.moveaxis(buffer, -1, 0), f(raw))


def test_into_checks_the_channel_count():
    f = normalizer(Normalize(kind="meanstd", mean=(1.0, 2.0), std=(1.0, 1.0)))
    with pytest.raises(ModelSpecError, match="2 mean/std values for an image with 3 channels"):
        f.into(np.zeros((3, 4, 4)), np.zeros((3, 4, 4), np.float32))
