"""The range of raster block sizes (a block is one zarr chunk of every work array), shared by the
command line and the library without importing either's heavy dependencies."""

from __future__ import annotations

MIN_BLOCK = 64
"""Smallest block edge in pixels: ``--block 1`` on a 700 x 900 scene wrote 1.3 million chunk files."""

MAX_BLOCK = 8192
"""Largest block edge in pixels: each block is held in memory (4 float32 bands of 8192^2: 1 GiB);
``--block 50000`` ended in an unexplained MemoryError."""
