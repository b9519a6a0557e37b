"""A local VRT mosaic (``gdalbuildvrt`` of GeoTIFF tiles, a common way to hand a night's scene over)
whose tile is missing or truncated fails the scene. It did not: local inputs were read with
``GDAL_NUM_THREADS=ALL_CPUS``, GDAL 3.10 reads a VRT's sources on worker threads, and a source that
fails there is logged ("ERROR 4: ... No such file or directory") and read as zeros; the scene was
segmented as class 0 where the tile was and its statistics recorded as done. Real faults: the tile
file is removed, or cut to half its size."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine

from pipeline.errors import InputError
from pipeline.raster.ingest import ingest_raster
from pipeline.raster.run import segment_raster
from tests.raster.test_raster_stats_contents import _spec_file

TIME = "2024-06-01T01:00:00"
TILE = 512


def _mosaic(folder: Path) -> tuple[Path, np.ndarray, list[Path]]:
    """``folder/mosaic.vrt``: 2 x 2 DEFLATE GeoTIFF tiles of 256^2 (3 bands), sources relative to the VRT;
    returns the VRT, the whole image ``(3, 512, 512)`` and the tiles."""
    folder.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(5).integers(1, 200, size=(3, 2 * TILE, 2 * TILE), dtype=np.uint8)
    sources: dict[int, list[str]] = {1: [], 2: [], 3: []}
    paths = []
    for row in range(2):
        for col in range(2):
            path = folder / f"tile_{row}_{col}.tif"
            transform = Affine(10, 0, 500000 + col * TILE * 10, 0, -10, 6000000 - row * TILE * 10)
            with rasterio.open(path, "w", driver="GTiff", width=TILE, height=TILE, count=3, dtype="uint8", crs="EPSG:32633",
                               transform=transform, tiled=True, blockxsize=128, blockysize=128, compress="deflate") as dst:
                dst.write(image[:, row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE])
            paths.append(path)
            for band in sources:
                sources[band].append(
                    f'<SimpleSource><SourceFilename relativeToVRT="1">{path.name}</SourceFilename><SourceBand>{band}</SourceBand>'
                    f'<SrcRect xOff="0" yOff="0" xSize="{TILE}" ySize="{TILE}"/>'
                    f'<DstRect xOff="{col * TILE}" yOff="{row * TILE}" xSize="{TILE}" ySize="{TILE}"/></SimpleSource>'
                )
    with rasterio.open(paths[0]) as src:
        wkt = src.crs.to_wkt()
    bands = "".join(f'<VRTRasterBand dataType="Byte" band="{b}">{"".join(s)}</VRTRasterBand>' for b, s in sources.items())
    vrt = folder / "mosaic.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="{2 * TILE}" rasterYSize="{2 * TILE}"><SRS>{wkt}</SRS>'
        f"<GeoTransform>500000, 10, 0, 6000000, 0, -10</GeoTransform>{bands}</VRTDataset>",
        encoding="utf-8",
    )
    return vrt, image, paths


def test_a_whole_vrt_mosaic_is_ingested_pixel_for_pixel(tmp_path):
    vrt, image, _ = _mosaic(tmp_path / "scene")
    ingest_raster(vrt, tmp_path / "work.zarr", block=TILE)
    assert (zarr.open_group(tmp_path / "work.zarr", mode="r")["image"][...] == image).all()


@pytest.mark.parametrize("fault", ["removed", "truncated"])
def test_a_vrt_mosaic_with_a_tile_missing_or_truncated_fails_and_writes_nothing(tmp_path, fault):
    vrt, _, tiles = _mosaic(tmp_path / "scene")
    broken = tiles[3]
    if fault == "removed":
        broken.unlink()
    else:
        os.truncate(broken, broken.stat().st_size // 2)
    out = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        segment_raster(vrt, _spec_file(tmp_path / "model"), out, time=TIME, device="cpu")
    assert caught.value.path == str(vrt)
    assert "read failed" in caught.value.problem
    assert not (out / "mosaic.labels.tif").exists() and not (out / "stats.zarr").exists()


def test_a_tile_rewritten_in_place_redoes_the_mosaic(tmp_path):
    """A retried night skips a scene done from the same input; for a VRT mosaic the input is its
    tiles too: a tile rewritten in place (the ``.vrt`` unchanged) was counted done already, and a
    killed run's ingest of the old tile was reused."""
    vrt, image, tiles = _mosaic(tmp_path / "in")
    spec = _spec_file(tmp_path / "model")
    first = segment_raster(vrt, spec, tmp_path / "out", time=TIME, device="cpu", block=512)
    assert segment_raster(vrt, spec, tmp_path / "out", time=TIME, device="cpu", block=512).skipped  # nothing changed
    with rasterio.open(first.labels_path) as src:
        before = src.read(1)

    with rasterio.open(tiles[3], "r+") as dst:  # the night's tile re-delivered with other pixels
        dst.write(255 - image[:, TILE:, TILE:])
    stamp = vrt.stat().st_mtime_ns
    redone = segment_raster(vrt, spec, tmp_path / "out", time=TIME, device="cpu", block=512)
    assert vrt.stat().st_mtime_ns == stamp and not redone.skipped
    with rasterio.open(redone.labels_path) as src:
        after = src.read(1)
    assert np.array_equal(after[:TILE], before[:TILE]) and np.array_equal(after[:, :TILE], before[:, :TILE])
    assert (after[TILE:, TILE:] != before[TILE:, TILE:]).mean() > 0.5  # the new tile's pixels were segmented

    # the work store of a run killed before the rewrite is not reused for the new tile
    work = tmp_path / "work.zarr"
    ingest_raster(vrt, work, block=512)
    with rasterio.open(tiles[0], "r+") as dst:
        dst.write(255 - image[:, :TILE, :TILE])
    ingest_raster(vrt, work, block=512)
    assert np.array_equal(zarr.open_group(work, mode="r")["image"][:, :TILE, :TILE], 255 - image[:, :TILE, :TILE])
