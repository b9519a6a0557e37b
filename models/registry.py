"""Architecture registry: name -> builder, plus ``package.module:callable`` import paths.

Builders take the spec and return a ``torch.nn.Module`` mapping ``(N, in_channels, *window)`` to
logits ``(N, n_classes, *window)``. The built-in builders live in :mod:`models.architectures` (one
module each) and register themselves when this module is imported: ``unet``, ``deeplabv3plus``,
``segformer``, ``segresnet``, ``swinunetr`` and ``monai-bundle``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from models.spec import ModelSpec
from pipeline.errors import ModelSpecError, SegpipeError

Builder = Callable[[ModelSpec], torch.nn.Module]

ARCHITECTURES: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder to :data:`ARCHITECTURES` under ``name``."""

    def wrap(builder: Builder) -> Builder:
        ARCHITECTURES[name] = builder
        return builder

    return wrap


def build_network(spec: ModelSpec) -> torch.nn.Module:
    """Build the (untrained) network a spec describes; weights are loaded by :func:`models.checkpoint.load_model`.

    An import path ``package.module:callable`` is imported with the spec file's own folder searched
    first (see :func:`import_callable`) and called with ``params`` as keyword arguments.

    Raises:
        ModelSpecError: unknown architecture, an import that fails, a builder that refuses ``params``
            (its message is kept), or a builder that returns no ``torch.nn.Module``.
    """
    where = spec.source or spec.name
    if ":" in spec.architecture:
        factory = import_callable(spec.architecture, where, spec_folder(spec))
        network = _call_builder(spec, lambda: factory(**spec.params), _signature(factory))
    else:
        builder = ARCHITECTURES.get(spec.architecture)
        if builder is None:
            known = ", ".join(sorted(ARCHITECTURES)) or "none"
            hint = f"; for an import path write '{spec.architecture}:callable'" if "." in spec.architecture else ""
            raise ModelSpecError(where, f"unknown architecture '{spec.architecture}'", f"known: {known}, or 'package.module:callable'{hint}")
        network = _call_builder(spec, lambda: builder(spec), "")
    if not isinstance(network, torch.nn.Module):
        raise ModelSpecError(where, f"architecture '{spec.architecture}' returned {type(network).__name__}, not a torch.nn.Module", "return a torch.nn.Module")
    return network


def spec_folder(spec: ModelSpec) -> Path | None:
    """The folder of the spec's YAML file (searched first for import-path architectures), if it has one."""
    return None if spec.source is None else Path(spec.source).resolve().parent


def import_callable(path: str, where: object, folder: Path | None = None) -> Callable[..., torch.nn.Module]:
    """Import ``package.module:attr[.attr]``, looking in ``folder`` (the spec's folder) before ``sys.path``.

    ``folder`` is put first on ``sys.path`` only while the module is imported, so ``mypkg/`` (or
    ``mypkg.py``) next to the spec is found without a PYTHONPATH; an installed package or a
    PYTHONPATH entry is found as before when the folder holds no such module. Modules are cached
    by name for the whole process (``sys.modules``), as Python does: two specs cannot use two
    different modules of the same name.

    Raises:
        ModelSpecError: the module is not found (the fix says where to put it), fails to import, or
            lacks the attribute, or the attribute is not callable.
    """
    module_name, _, attr = path.partition(":")
    try:
        with _searched_first(folder):
            obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        if exc.name and module_name.startswith(exc.name) and (exc.name == module_name or module_name[len(exc.name)] == "."):
            here = f"next to the spec (in {folder})" if folder is not None else "in a folder on PYTHONPATH"
            raise ModelSpecError(
                where,
                f"cannot import architecture '{path}': no module named '{exc.name}'",
                f"put {top}/ (a package) or {top}.py {here}, install it (pip install ...), or add the folder holding it to PYTHONPATH",
            ) from exc
        raise ModelSpecError(
            where, f"cannot import architecture '{path}': importing '{module_name}' needs '{exc.name}', which is not installed", f"install {exc.name}"
        ) from exc
    except Exception as exc:  # a SyntaxError or any error raised while the user's module runs
        problem = f"cannot import architecture '{path}': importing '{module_name}' failed: {type(exc).__name__}: {exc}"
        raise ModelSpecError(where, problem, "fix the module") from exc
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise ModelSpecError(where, f"cannot import architecture '{path}': {exc}", "check the 'package.module:callable' path") from exc
    if not callable(obj):
        raise ModelSpecError(where, f"architecture '{path}' is not callable", "point to a class or function returning a torch.nn.Module")
    refused = _not_a_builder(obj)
    if refused:
        raise ModelSpecError(
            where,
            f"architecture '{path}' is {refused}; it is not called",
            "point to a torch.nn.Module subclass, or to a Python function of your own (or of a library) that returns one",
        )
    return obj


def _not_a_builder(obj: object) -> str:
    """Why ``obj`` cannot be a network builder ("" when it can): a class that is no ``torch.nn.Module``,
    a built-in (C) function, or a function of Python's standard library.

    A spec is code (README: "Model specs are code"); this only keeps a spec that ships no code of its
    own from calling what can never build a network but can act on the machine (``os:system``,
    ``subprocess:run``, ``shutil:rmtree``) with its ``params``.
    """
    if inspect.isclass(obj):
        return "" if issubclass(obj, torch.nn.Module) else f"the class {obj.__module__}.{obj.__qualname__}, not a torch.nn.Module"
    if not (inspect.isfunction(obj) or inspect.ismethod(obj)):
        return f"a {type(obj).__name__}, not a class or Python function building a network"
    if _in_standard_library(obj):
        return f"a function of Python's standard library ({obj.__module__}.{obj.__qualname__}), which builds no network"
    return ""


def _in_standard_library(function: Callable[..., object]) -> bool:
    """Whether ``function`` comes from Python's standard library: by its module's name *and* file, so a
    user's own ``code.py`` or ``test/`` next to the spec is not taken for the standard library's."""
    module = inspect.getmodule(function)
    name = (getattr(function, "__module__", None) or "").split(".")[0]
    if module is None or name not in sys.stdlib_module_names:
        return False
    file = getattr(module, "__file__", None)
    if file is None:
        return True  # built into the interpreter
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    return Path(file).resolve().is_relative_to(stdlib)


@contextlib.contextmanager
def _searched_first(folder: Path | None) -> Iterator[None]:
    if folder is None:
        yield
        return
    entry = str(folder)
    sys.path.insert(0, entry)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        if sys.path and sys.path[0] == entry:
            del sys.path[0]
        elif entry in sys.path:
            sys.path.remove(entry)


def _call_builder(spec: ModelSpec, build: Callable[[], object], signature: str) -> object:
    """Run a builder; anything it raises (other than our own errors) becomes a ModelSpecError naming the spec."""
    try:
        return build()
    except SegpipeError:
        raise
    except Exception as exc:
        takes = f"; it takes {signature}" if signature else ""
        raise ModelSpecError(
            spec.source or spec.name,
            f"architecture '{spec.architecture}' failed to build with params {spec.params}: {type(exc).__name__}: {exc}",
            f"fix params: in the model spec{takes}",
        ) from exc


def _signature(obj: Callable[..., object]) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


# Register the built-in architectures. Placed last because they import ``register`` from here; the
# builder modules import only torch at module level (MONAI and transformers load inside the builders).
import models.architectures  # noqa: E402,F401
