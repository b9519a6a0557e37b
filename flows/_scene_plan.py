"""What a ``landcover`` run will do: the scene catalog merged with the flow's parameters, paths
resolved, the regions file and the model checked once, before any scene (:func:`plan_scenes`).

Kept apart from :mod:`flows.landcover` (the flow and its task); ``plan_scenes`` and ``ScenePlan``
are re-exported there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows._runtime import Failure, distinct_names, flow_wording, output_root, require_checkpoint, run_logger
from flows.catalog import check_bands, expand, is_remote, load_scene_catalog, spec_path
from pipeline.errors import InputError

FLOW_NAME = "landcover"
DEFAULT_CATALOG = "catalogs/scenes/demo.yaml"
CATALOG_REGIONS = "regions: in "  # how messages name a catalog's regions key: "regions: in <catalog>"


@dataclass(frozen=True)
class ScenePlan:
    """The work of one run: ``todo`` holds ``(name, scene)`` pairs; paths are absolute (URLs as given)."""

    out_dir: Path
    model: str
    todo: tuple[tuple[str, str], ...]
    failures: tuple[Failure, ...]
    regions: str | None
    region_field: str | None
    bands: tuple[int, ...] | None = None
    region_layer: str | None = None


def plan_scenes(
    catalog: str | None,
    scenes: list[str] | None,
    model: str | None,
    regions: str | None,
    region_field: str | None,
    out: str | None,
    bands: list[int] | None = None,
    *,
    region_layer: str | None = None,
) -> ScenePlan:
    """Merge the catalog with explicit parameters (which win), resolve paths, generate missing demo inputs.

    Explicit ``scenes`` replace the whole catalog: it is not read (a warning says so when ``catalog``
    is given too), so a deployment's default catalog never lends its regions or model to scenes
    given at run time. Catalog paths are relative to the catalog file, explicit ones to the working
    directory. A scene whose output name repeats an earlier one becomes a failure (its outputs would
    overwrite the first). The regions file is checked here, once, before any scene: that it is
    there and, for a local file, that its layer is clear (``region_layer`` names one of its layers,
    or it has one layer). A catalog's ``region_layer`` goes with the catalog's regions file only.

    Raises:
        InputError: no scenes, no model, bad ``bands``, a missing regions file, ``region_field``
            or ``region_layer`` without regions, a regions file with several layers and none
            named, a layer it does not have, or a catalog that cannot be read.
    """
    from pipeline.raster.probe import scene_stem

    if scenes is not None and catalog:
        run_logger("flows.landcover").warning(  # the flow's logger, as before the split
            "scenes= given, so catalog=%s is not used (scenes replace the whole catalog); "
            "pass model=, regions=, region_field=, region_layer=, bands= and out= with them as needed", catalog,
        )
    cat = load_scene_catalog(catalog or DEFAULT_CATALOG) if scenes is None else None
    out_dir = output_root(out, cat.output if cat else None, FLOW_NAME)
    base = cat.source.parent if cat else Path.cwd()
    if scenes is not None:
        items = [expand(s, base=Path.cwd(), output=out_dir) for s in scenes]
    else:
        items = [expand(s, base=base, output=out_dir) for s in cat.scenes]
    region_file = regions or (cat.regions if cat else None)
    region_file = expand(region_file, base=Path.cwd() if regions else base, output=out_dir) if region_file else None
    model_name = model or (cat.model if cat else None)
    if not items:
        raise InputError("scenes", "no scenes given", "pass scenes=[...] or a catalog with scenes:")
    if not model_name:
        raise InputError(str(cat.source) if cat else "model", "no model given", "pass model=<name or spec.yaml> or set model: in the catalog")
    if cat is not None and cat.demo is not None and scenes is None:
        from flows._demo import ensure_demo_scenes

        ensure_demo_scenes(cat.demo, items, region_file if not regions else None)
    field = region_field or (cat.region_field if cat else None)
    layer = region_layer or (cat.region_layer if cat and not regions else None)
    _check_regions(region_file, field, layer, "the regions= parameter" if regions else f"{CATALOG_REGIONS}{cat.source}" if cat else "regions=")
    todo, failures = distinct_names(items, scene_stem)
    spec = spec_path(model_name, base if not model else Path.cwd())
    require_checkpoint(spec)
    return ScenePlan(
        out_dir=out_dir,
        model=spec,
        todo=tuple(todo),
        failures=tuple(failures),
        regions=region_file,
        region_field=field,
        region_layer=layer,
        bands=check_bands(bands, "bands") if bands is not None else (cat.bands if cat else None),
    )


def _check_regions(region_file: str | None, region_field: str | None, region_layer: str | None, given_by: str) -> None:
    """Refuse, before any scene runs, a local regions file that is not there or whose layer is not
    clear (:func:`pipeline.raster.regions.choose_layer`), and a ``region_field`` or ``region_layer``
    without regions.

    Raises:
        InputError: naming the flow parameter (or catalog key) that gave the value.
    """
    if region_file is None:
        for name, value in (("region_field", region_field), ("region_layer", region_layer)):
            if value:
                raise InputError(name, f"{name}={value!r} given without regions", f"pass regions=<vector file> too, or leave {name} out")
        return
    if is_remote(region_file):
        return
    if not Path(region_file).is_file():
        fix = f"check {given_by} (relative paths: to the working directory, or to the catalog for a catalog's regions)"
        raise InputError(region_file, "regions file not found", fix)
    from pipeline.raster.regions import choose_layer

    try:
        choose_layer(region_file, region_layer)
    except InputError as exc:  # its fix names --region-layer: the flow's words, and the catalog key for a catalog's file
        fix = flow_wording(exc.fix)
        if given_by.startswith(CATALOG_REGIONS):
            fix += f" or region_layer: in {given_by.removeprefix(CATALOG_REGIONS)}"
        raise InputError(exc.path, exc.problem, fix) from exc
