"""``architecture: "pkg.mod:callable"``: the spec's own folder is searched first; PYTHONPATH and installed
packages still work; failures name the spec and say where to put the module; bad params are named."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import yaml

from models.registry import build_network
from models.spec import load_spec
from pipeline.errors import ModelSpecError

NET = "import torch\n\n\ndef build(in_ch=4, n_classes=3, tag='{tag}'):\n    net = torch.nn.Conv2d(in_ch, n_classes, 1)\n    net.tag = tag\n    return net\n"


@pytest.fixture
def pkg():
    """A module name unique to the test, removed from sys.modules afterwards."""
    name = f"segpipe_test_pkg_{uuid.uuid4().hex[:8]}"
    yield name
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def make_package(folder: Path, name: str, tag: str, body: str = NET) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text("")
    (folder / name / "nets.py").write_text(body.replace("{tag}", tag))


def write_spec(folder: Path, architecture: str, params: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    raw = {
        "task": "raster", "architecture": architecture, "params": params or {}, "in_channels": 4,
        "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "c"}], "window": [32, 32],
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_package_next_to_the_spec_is_found_without_pythonpath(tmp_path, pkg):
    specs = tmp_path / "specs"
    make_package(specs, pkg, "beside")
    before = list(sys.path)
    net = build_network(load_spec(write_spec(specs, f"{pkg}.nets:build")))
    assert net.tag == "beside"
    assert sys.path == before  # the folder was on sys.path only during the import


def test_pythonpath_still_works(tmp_path, pkg, monkeypatch):
    elsewhere = tmp_path / "site"
    make_package(elsewhere, pkg, "pythonpath")
    monkeypatch.syspath_prepend(str(elsewhere))
    assert build_network(load_spec(write_spec(tmp_path / "specs", f"{pkg}.nets:build"))).tag == "pythonpath"


def test_the_spec_folder_comes_first(tmp_path, pkg, monkeypatch):
    make_package(tmp_path / "site", pkg, "pythonpath")
    make_package(tmp_path / "specs", pkg, "beside")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert build_network(load_spec(write_spec(tmp_path / "specs", f"{pkg}.nets:build"))).tag == "beside"


def test_a_missing_module_says_where_to_put_it(tmp_path, pkg):
    path = write_spec(tmp_path / "specs", f"{pkg}.nets:build")
    with pytest.raises(ModelSpecError) as err:
        build_network(load_spec(path))
    message = str(err.value)
    assert message.startswith(f"{path}: cannot import architecture '{pkg}.nets:build': no module named '{pkg}'")
    assert f"put {pkg}/ (a package) or {pkg}.py next to the spec (in {path.parent.resolve()})" in message
    assert "install it" in message and "PYTHONPATH" in message


def test_a_missing_dependency_of_the_module_is_named(tmp_path, pkg):
    make_package(tmp_path / "specs", pkg, "x", body="import segpipe_no_such_dependency_xyz\n")
    with pytest.raises(ModelSpecError, match="needs 'segpipe_no_such_dependency_xyz', which is not installed"):
        build_network(load_spec(write_spec(tmp_path / "specs", f"{pkg}.nets:build")))


def test_a_module_that_fails_to_import_is_named(tmp_path, pkg):
    make_package(tmp_path / "specs", pkg, "x", body="def build(:\n")
    with pytest.raises(ModelSpecError, match=rf"importing '{pkg}.nets' failed: SyntaxError"):
        build_network(load_spec(write_spec(tmp_path / "specs", f"{pkg}.nets:build")))


def test_unknown_params_become_a_spec_error_naming_the_builder_message(tmp_path, pkg):
    make_package(tmp_path / "specs", pkg, "x")
    path = write_spec(tmp_path / "specs", f"{pkg}.nets:build", {"foo": 1})
    with pytest.raises(ModelSpecError) as err:
        build_network(load_spec(path))
    message = str(err.value)
    assert message.startswith(f"{path}: architecture '{pkg}.nets:build' failed to build with params {{'foo': 1}}: TypeError: ")
    assert "unexpected keyword argument 'foo'" in message
    assert "it takes (in_ch=4, n_classes=3, tag='x')" in message


def test_a_dotted_name_without_a_colon_gets_a_hint(tmp_path):
    with pytest.raises(ModelSpecError, match=r"for an import path write 'mypkg\.mymod:callable'"):
        build_network(load_spec(write_spec(tmp_path, "mypkg.mymod")))
