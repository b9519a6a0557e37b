"""Scene and study catalogs (``catalogs/scenes/*.yaml``, ``catalogs/studies/*.yaml``) and study listings.

A scene catalog::

    name: nightly-north
    model: demo-landcover            # a catalog name (catalogs/models) or a spec YAML path
    scenes:                          # paths (relative to this file), URLs or /vsi paths
      - scenes/2024-06-01.tif
      - https://example.org/cogs/tile-17.tif
    regions: districts.geojson       # optional polygons: area per region and class
    region_field: name               # optional attribute naming the regions
    region_layer: districts          # the regions file's layer (needed when it has several)
    bands: [4, 3, 2, 8]              # optional 1-based bands fed to the model, in order (default: all)
    output: /data/landcover          # optional output root (relative to this file)
    demo: {size: [512, 512], seed: 1}  # optional: generate missing inputs with pipeline.demo

A study catalog has ``studies:`` (NIfTI files or DICOM series folders) instead of scenes and
regions, and ``demo: {shape: [Z, Y, X], seed: 1}``.

Strings may start with ``{output}``, the run's output root, so that a catalog can name inputs
that :mod:`flows._demo` generates there on first use.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.yaml_files import read_yaml_mapping

OUTPUT_TOKEN = "{output}"
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class DemoRecipe:
    """How to generate missing demo inputs: ``size`` is ``(Y, X)`` pixels or ``(Z, Y, X)`` voxels."""

    size: tuple[int, ...]
    seed: int = 1


@dataclass(frozen=True)
class SceneCatalog:
    """A parsed scene catalog; ``scenes`` and ``regions`` may still hold ``{output}`` (see :func:`expand`)."""

    source: Path
    name: str
    model: str | None
    scenes: tuple[str, ...]
    regions: str | None = None
    region_field: str | None = None
    output: Path | None = None
    demo: DemoRecipe | None = None
    bands: tuple[int, ...] | None = None
    region_layer: str | None = None


@dataclass(frozen=True)
class StudyCatalog:
    """A parsed study catalog; ``studies`` may still hold ``{output}`` (see :func:`expand`)."""

    source: Path
    name: str
    model: str | None
    studies: tuple[str, ...]
    output: Path | None = None
    demo: DemoRecipe | None = None


def find_catalog(path: str | Path) -> Path:
    """An existing catalog file: ``path`` as given (relative to the working directory) or relative to the repository.

    Raises:
        InputError: no such file.
    """
    from flows._runtime import REPO_ROOT

    given = Path(path).expanduser()
    for candidate in (given, REPO_ROOT / given):
        if candidate.is_file():
            return candidate.resolve()
    raise InputError(path, "catalog file not found", f"give a YAML file path (relative paths are tried in the working directory and in {REPO_ROOT})")


def is_remote(text: str) -> bool:
    """URLs (``https://``, ``s3://``...) and GDAL virtual paths (``/vsicurl/...``) are used as given."""
    return "://" in text or text.startswith("/vsi")


def expand(value: str, *, base: Path, output: Path) -> str:
    """Resolve one catalog string: ``{output}`` -> the output root, relative paths -> under ``base``; URLs unchanged."""
    if value.startswith(OUTPUT_TOKEN):
        return str(output / value[len(OUTPUT_TOKEN):].lstrip("/\\"))
    if is_remote(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def model_ref(value: str, base: Path) -> str:
    """A catalog's ``model``: a spec file path (resolved against ``base``) or a model catalog name (unchanged)."""
    if value.endswith((".yaml", ".yml")) or "/" in value or "\\" in value:
        return expand(value, base=base, output=base)
    return value


def spec_path(model: str, base: Path) -> str:
    """A model name or spec path (relative to ``base``, see :func:`model_ref`) as an absolute spec path,
    so that every worker loads the same file."""
    from models.spec import resolve_spec_path

    return str(resolve_spec_path(model_ref(model, base)).resolve())


def load_scene_catalog(path: str | Path) -> SceneCatalog:
    """Read and check a scene catalog (see the module docstring).

    Raises:
        InputError: missing file, bad YAML, no scenes, or a key of the wrong type.
    """
    source, raw = _read(path)
    scenes = _strings(raw, "scenes", source)
    return SceneCatalog(
        source=source,
        name=str(raw.get("name") or source.stem),
        model=_optional_str(raw, "model", source),
        scenes=scenes,
        regions=_optional_str(raw, "regions", source),
        region_field=_optional_str(raw, "region_field", source),
        region_layer=_optional_str(raw, "region_layer", source),
        output=_output(raw, source),
        demo=_demo(raw, source, dims=2),
        bands=check_bands(raw.get("bands"), source),
    )


def load_study_catalog(path: str | Path) -> StudyCatalog:
    """Read and check a study catalog (see the module docstring).

    Raises:
        InputError: missing file, bad YAML, no studies, or a key of the wrong type.
    """
    source, raw = _read(path)
    return StudyCatalog(
        source=source,
        name=str(raw.get("name") or source.stem),
        model=_optional_str(raw, "model", source),
        studies=_strings(raw, "studies", source),
        output=_output(raw, source),
        demo=_demo(raw, source, dims=3),
    )


def list_studies(where: str | Path) -> list[str]:
    """Studies in a folder or matching a glob pattern: NIfTI files and DICOM series folders, sorted.

    A folder lists its ``.nii``/``.nii.gz`` files and its sub-folders (each taken as one DICOM
    series); a pattern lists the matching NIfTI files and folders; a NIfTI file is one study.

    Raises:
        InputError: nothing found.
    """
    text = str(where)
    if Path(text).is_file() and text.lower().endswith(NIFTI_SUFFIXES):
        return [str(Path(text).resolve())]
    if glob.has_magic(text):
        matches = [Path(p) for p in sorted(glob.glob(text))]
        hint = "check the pattern (quote it so the shell does not expand it)"
    else:
        folder = Path(text).expanduser()
        if not folder.is_dir():
            fix = "give a folder of studies, a pattern like 'ct/*.nii.gz' or a .yaml catalog"
            raise InputError(text, "not a folder, a glob pattern or a catalog YAML", fix)
        matches = sorted(folder.iterdir())
        hint = "put NIfTI files or DICOM series folders in it"
    studies = [str(p.resolve()) for p in matches if _is_study(p)]
    if not studies:
        raise InputError(text, "no studies found (NIfTI files or DICOM series folders)", hint)
    return studies


def _is_study(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return path.suffix != ".zarr" and any(p.is_file() and not p.name.startswith(".") for p in path.iterdir())
    return path.name.lower().endswith((*NIFTI_SUFFIXES, ".hdr"))  # a NIfTI pair by its header (its .img is not a study of its own)


def check_bands(value: Any, source: str | Path) -> tuple[int, ...] | None:
    """``bands`` of a catalog or flow parameter: None, or a non-empty list of 1-based band numbers.

    Raises:
        InputError: anything else (names ``source`` and the value).
    """
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in value):
        fix = "write bands: [4, 3, 2, 8] (the bands the model takes, in order) or leave it out"
        raise InputError(source, f"'bands' must be a list of 1-based band numbers, got {value!r}", fix)
    return tuple(value)


def _read(path: str | Path) -> tuple[Path, dict[str, Any]]:
    source = find_catalog(path)
    return source, read_yaml_mapping(source, what="a catalog", help_for_keys="see flows/catalog.py for the keys")


def _strings(raw: dict[str, Any], key: str, source: Path) -> tuple[str, ...]:
    items = raw.get(key)
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise InputError(source, f"'{key}' must be a non-empty list of paths or URLs", f"write {key}: [a.tif, b.tif]")
    return tuple(items)


def _optional_str(raw: dict[str, Any], key: str, source: Path) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InputError(source, f"'{key}' must be a string, got {value!r}", f"write {key}: <text> or leave it out")
    return value


def _output(raw: dict[str, Any], source: Path) -> Path | None:
    value = _optional_str(raw, "output", source)
    return None if value is None else Path(expand(value, base=source.parent, output=source.parent))


def _demo(raw: dict[str, Any], source: Path, *, dims: int) -> DemoRecipe | None:
    value = raw.get("demo")
    if value is None:
        return None
    key = "size" if dims == 2 else "shape"
    size = value.get(key) if isinstance(value, dict) else None
    if not isinstance(size, list) or len(size) != dims or not all(isinstance(s, int) and s > 0 for s in size):
        axes = "[Y, X]" if dims == 2 else "[Z, Y, X]"
        raise InputError(source, f"demo must be a mapping with {key}: {axes} (positive integers), got {value!r}", f"write demo: {{{key}: {axes}, seed: 1}}")
    seed = value.get("seed", 1)
    if not isinstance(seed, int):
        raise InputError(source, f"demo seed must be an integer, got {seed!r}", "write seed: 1")
    return DemoRecipe(size=tuple(size), seed=seed)
