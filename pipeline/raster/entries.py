"""The rules an entry must meet to join a land-cover ``stats.zarr``; checked before any work and again under the store's lock.

* **Same place, another input.** An entry (one ``time``, one ``scene``) whose recorded ``source``
  differs from this run's is not replaced unless ``force``: two files with the same name (nightly
  dated folders, ``d1/tile.tif`` and ``d2/tile.tif``) and the same ``--time`` would otherwise
  silently overwrite each other. Entries without a recorded source (older segpipe) are replaced.
* **One class table.** Every class name already in the store keeps its id and every id its name;
  a model that says otherwise is refused. New classes (a new name with a new id) are added after
  the existing ones (:func:`class_order`).

Pure functions of an open Dataset, plus :func:`check_store_accepts`, which opens the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.errors import InputError
from pipeline.stats_store import open_stats

ClassTable = Sequence[tuple[int, str]]  # (id, name) in store or model order


def class_table(ds: xr.Dataset) -> list[tuple[int, str]]:
    """The ``(id, name)`` pairs of a statistics Dataset, in its ``class`` order."""
    if "class" not in ds.coords or "class_id" not in ds.coords:
        return []
    return [(int(i), str(n)) for i, n in zip(ds["class_id"].values, ds["class"].values)]


def class_order(old: ClassTable, new: ClassTable) -> list[str]:
    """Class names in store order: ``old``'s, then ``new``'s classes that are not in ``old``, in ``new``'s order."""
    names = [n for _, n in old]
    return names + [n for _, n in new if n not in set(names)]


def check_class_table(old: ClassTable, new: ClassTable, store: str | Path) -> None:
    """Refuse a model whose classes contradict the store's table (a name with another id, an id with another name).

    Raises:
        InputError: naming the store, the conflicts, both tables and the fix.
    """
    by_name = {n: i for i, n in old}
    by_id = {i: n for i, n in old}
    conflicts = []
    for i, n in new:
        if n in by_name and by_name[n] != i:
            conflicts.append(f"'{n}' is id {by_name[n]} in the store, {i} in the model")
        elif i in by_id and by_id[i] != n:
            conflicts.append(f"id {i} is '{by_id[i]}' in the store, '{n}' in the model")
    if conflicts:
        raise InputError(
            store,
            f"the model's classes contradict the store's: {'; '.join(conflicts)} (store: {_table_text(old)}; model: {_table_text(new)})",
            "write this model's statistics to another --out folder; a class name keeps one id in a store",
        )


def check_replacement(old: xr.Dataset, store: str | Path, *, time: np.datetime64, scene: str, source: str | None, force: bool) -> None:
    """Refuse to replace the entry ``(time, scene)`` when it was made from another ``source``.

    Passes when ``force``, when this run's ``source`` is unknown (None), when there is no such entry,
    or when the entry has no recorded source (written by an older segpipe).

    Raises:
        InputError: naming the store, the scene, both sources and the fix.
    """
    if force or source is None or "source" not in old.variables:
        return
    if time not in old["time"].values or scene not in old["scene"].values:
        return
    before = old["source"].sel(time=time, scene=scene).values.item()
    if not isinstance(before, str) or before in ("", source):
        return
    stamp = np.datetime_as_string(time, unit="s")
    raise InputError(
        store,
        f"scene '{scene}' at time {stamp} was made from {before}, not {source}; this run would replace it",
        "use another --out or --time, rename one input, or pass --force to replace it",
    )


def check_store_accepts(
    store: str | Path,
    *,
    time: np.datetime64 | None,
    scene: str,
    source: str | None,
    classes: ClassTable,
    force: bool = False,
    snapshot: xr.Dataset | None = None,
) -> None:
    """Both rules against the store as it is now (absent: nothing to check); call before any work.
    ``source`` None checks the class table only. ``snapshot``: the store already read with
    :func:`provenance_snapshot` (the caller reuses it), else it is read here.

    Raises:
        InputError: see :func:`check_replacement` and :func:`check_class_table`.
    """
    store = Path(store)
    if snapshot is None:
        if not (store / "zarr.json").is_file():
            return
        snapshot = provenance_snapshot(store)  # a snapshot under the store's shared lock: another run may be appending
    check_class_table(class_table(snapshot), classes, store)
    if source is not None and "source" in snapshot.variables and time in snapshot["time"].values and scene in snapshot["scene"].values:
        check_replacement(snapshot[["source"]], store, time=time, scene=scene, source=source, force=force)


def provenance_snapshot(store: str | Path) -> xr.Dataset:
    """The store's coordinates and its per-entry variables (dims ``time``, ``scene``: the provenance), loaded
    under its shared lock: what the checks before a run need (:func:`check_store_accepts`, :func:`entry_done`),
    without the areas per region and class (at 3,000 regions, 100 scenes and a year of nights, 38 GB as float64)."""
    return open_stats(store, lambda ds: ds.drop_vars([v for v in ds.data_vars if set(ds[v].dims) - {"time", "scene"}]))


def entry_done(ds: xr.Dataset, *, time: np.datetime64, scene: str, provenance) -> bool:
    """Whether the statistics ``ds`` (a snapshot: :func:`pipeline.stats_store.open_stats`) already
    hold the entry ``(time, scene)`` made exactly as this run would make it: same source, model,
    checkpoint, regions and inputs (:mod:`pipeline.raster.provenance`; the segpipe version may
    differ). A retried nightly run (same scheduled time) then skips the scene. Entries without a
    recorded provenance (older segpipe) are never taken as done."""
    names = [n for n in provenance.as_dict() if n != "segpipe_version"]
    if any(n not in ds.variables for n in names) or time not in ds["time"].values or scene not in ds["scene"].values:
        return False
    recorded = ds[names].sel(time=time, scene=scene)
    wanted = provenance.as_dict()
    return bool(wanted["inputs_sha256"]) and all(str(recorded[n].values.item()) == wanted[n] for n in names)


def _table_text(table: ClassTable) -> str:
    return ", ".join(f"{i}={n}" for i, n in table) or "none"
