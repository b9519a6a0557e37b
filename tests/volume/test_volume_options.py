"""VolumeOptions: checked and normalised once when built, a plain value that pickles (Dask tasks)."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.volume import VolumeOptions


def test_defaults_are_the_old_keyword_defaults():
    assert VolumeOptions() == VolumeOptions(device="auto", block=None, force=False, series_uid=None, volume_index=None)


def test_block_and_volume_index_are_normalised_to_plain_ints():
    options = VolumeOptions(block=[np.int64(8), 16, np.int32(32)], volume_index=np.int64(1))
    assert options.block == (8, 16, 32) and all(type(b) is int for b in options.block)
    assert options.volume_index == 1 and type(options.volume_index) is int


@pytest.mark.parametrize("block", [(8, 16), (8, 16, 32, 4), (8, 0, 16), (8, -1, 16), (8.0, 16, 16), (True, 16, 16), 8, "8 16 16"])
def test_bad_block_names_the_value_and_the_fix(block):
    with pytest.raises(InputError, match=r"^block: .* \(give block=\(z, y, x\) voxels on the model grid, each at least 1") as info:
        VolumeOptions(block=block)
    assert repr(block) in str(info.value)


@pytest.mark.parametrize("index", [-1, 1.0, "0", False])
def test_bad_volume_index_names_the_value_and_the_fix(index):
    with pytest.raises(InputError, match=r"^volume_index: .* \(give the 0-based volume of a 4D NIfTI \(0 for the first\), or None"):
        VolumeOptions(volume_index=index)


@pytest.mark.parametrize("uid", ["", "  ", 1.2])
def test_bad_series_uid_is_refused(uid):
    with pytest.raises(InputError, match=r"^series_uid: .* is not a SeriesInstanceUID"):
        VolumeOptions(series_uid=uid)


def test_replace_checks_again():
    with pytest.raises(InputError, match="block"):
        dataclasses.replace(VolumeOptions(), block=(0, 1, 1))


def test_frozen_hashable_and_pickles():
    options = VolumeOptions(device="cpu", block=(8, 16, 16), force=True, series_uid="1.2.3", volume_index=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.force = False  # type: ignore[misc]
    again = pickle.loads(pickle.dumps(options))
    assert again == options and hash(again) == hash(options)
