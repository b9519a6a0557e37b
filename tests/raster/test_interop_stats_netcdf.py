"""An analyst's exports of the raster ``stats.zarr``: ``ds.to_netcdf`` (every installed engine), CSV, raw zarr.

netCDF has no boolean attributes: a store whose root carried ``segpipe_every_chunk = True`` made
``xr.open_zarr(store).to_netcdf("x.nc")`` fail with netCDF4 (the default engine) and h5netcdf.
"""

from __future__ import annotations

import importlib.util
import warnings
from numbers import Number

import numpy as np
import pytest
import xarray as xr

from pipeline.raster.stats import append_stats
from pipeline.stats_store import EVERY_CHUNK_ATTR
from tests.raster.test_stats_fast_append import entry, prov

ENGINES = [e for e, module in (("netcdf4", "netCDF4"), ("h5netcdf", "h5netcdf"), ("scipy", "scipy")) if importlib.util.find_spec(module)]


def _entry(value: float) -> xr.Dataset:
    return entry(value, regions=("Nordfeld", "Süd"))  # non-ASCII region names through netCDF


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two nights of one scene: a whole write, then the fast append. Tests only read it."""
    store = tmp_path_factory.mktemp("stats") / "stats.zarr"
    append_stats(_entry(1.0), store, time="2026-01-01T02:00:00", scene="a", provenance=prov("/data/a1.tif"))
    append_stats(_entry(2.0), store, time="2026-01-02T02:00:07", scene="a", provenance=prov("/data/a2.tif"))  # the fast append
    return store


def _open(store) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(store).load()


def _netcdf_attribute(value) -> bool:
    """What netCDF can hold as an attribute: a string, a non-boolean number, or a 1-D array/list of one of them."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (str, bytes, Number, np.number)):
        return True
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value)
        return array.ndim == 1 and array.dtype.kind in "iufSU"
    return False


def test_every_attribute_is_netcdf_safe(store):
    ds = _open(store)
    bad = {f"{name}.{key}": value for name, var in [("<root>", ds), *ds.variables.items()] for key, value in var.attrs.items() if not _netcdf_attribute(value)}
    assert not bad, f"attributes netCDF cannot hold: {bad}"
    assert ds.attrs[EVERY_CHUNK_ATTR] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_to_netcdf_round_trips(store, tmp_path, engine):
    ds = _open(store)
    path = tmp_path / f"stats-{engine}.nc"
    ds.to_netcdf(path, engine=engine)
    with xr.open_dataset(path, engine=engine) as back:
        back = back.load()
    assert back["time"].values.tolist() == ds["time"].values.tolist()  # CF time decodes to the same instants
    for name in ("region", "class", "scene", "class_color", "source"):
        assert [str(v) for v in back[name].values.ravel()] == [str(v) for v in ds[name].values.ravel()]  # "Süd" included
    np.testing.assert_array_equal(back["area_m2"].values, ds["area_m2"].values)
    assert back["area_m2"].attrs["units"] == "m2"


def test_default_engine_and_csv(store, tmp_path):
    """Exactly what an analyst types, with whatever engine is installed."""
    ds = _open(store)
    ds.to_netcdf(tmp_path / "x.nc")
    ds.to_dataframe().to_csv(tmp_path / "x.csv")
    assert (tmp_path / "x.csv").read_text(encoding="utf-8").count("Süd") == 2 * 3  # 2 nights x 3 classes


def test_a_store_with_the_old_boolean_attribute_is_converted_by_the_next_append(store, tmp_path):
    ds = _open(store).assign_attrs({EVERY_CHUNK_ATTR: True})  # as segpipe wrote it before
    for variable in ds.variables.values():
        variable.encoding = {}
    old = tmp_path / "old.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(old, zarr_format=3, consolidated=True, write_empty_chunks=True)
    append_stats(_entry(3.0), old, time="2026-01-03T02:00:00", scene="a", provenance=prov("/data/a3.tif"))
    converted = _open(old)
    assert type(converted.attrs[EVERY_CHUNK_ATTR]) is int and converted.attrs[EVERY_CHUNK_ATTR] == 1
    assert converted.sizes["time"] == 3
