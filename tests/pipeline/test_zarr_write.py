"""Arrays opened for writing skip zarr's per-chunk fill-value comparison (the slow part of a write)."""

from __future__ import annotations

import numpy as np
import zarr

from pipeline.zarr_write import fast_writes


def test_fast_writes_writes_every_chunk_and_reads_back(tmp_path):
    array = fast_writes(zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(4, 6), chunks=(2, 3), dtype="uint8", fill_value=0))
    data = np.arange(24, dtype=np.uint8).reshape(4, 6)
    data[:2, :3] = 0  # one chunk equal to the fill value: written anyway, no comparison made
    array[:] = data
    assert array.config.write_empty_chunks
    assert (tmp_path / "a.zarr" / "c" / "0" / "0").exists()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:], data)
