"""README.md and docs/*.md stay true: what a first-time user copies from them runs.

Checked cheaply (one shared ``segpipe demo`` run, the ``demo_run`` session fixture in tests/conftest.py):

- the command synopsis under "## Commands" lists exactly the options and inputs of the real parser
  (pipeline/cli.py), and every ``segpipe ...`` line in a code block parses with it;
- every ``python bench/X.py --flag`` in a code block or inline code names a script that exists and
  flags its argparse defines (read from the script's source, nothing run);
- the quick start's ``make demo`` / ``make test`` are what the Makefile and .ci/run do;
- every python block runs, as written, next to the ``segpipe-demo/`` folder that ``make demo`` writes,
  and its ``# dims: ...`` / ``# ... row per ...`` comments are the real dims and table rows;
- the model spec YAML block is a valid spec whose network passes the load-time probe;
- the outputs the README promises (``out/<stem>.labels.tif``, ``S.labels.json``, ...) exist after
  the demo run, the variables its stats.zarr bullets name are in the stores, and every variable of
  the stores is named in the README;
- every repository path and ``pipeline.x.y`` name the docs mention exists.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = (README, *sorted((REPO / "docs").glob("*.md")))


@dataclass(frozen=True)
class Fence:
    """One fenced code block: its file, the line of its opening fence, its language tag and its text."""

    path: Path
    line: int
    lang: str
    text: str


def fences(path: Path) -> list[Fence]:
    """The fenced code blocks of a Markdown file, in order."""
    found, lang, start, body = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```") and lang is None:
            lang, start, body = line[3:].strip(), number, []
        elif line.startswith("```"):
            found.append(Fence(path, start, lang, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{path}: fence opened on line {start} is never closed"
    return found


def inline_code(text: str) -> list[str]:
    """The inline code spans (single backticks) of Markdown prose, code blocks left out."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", prose)


def section(heading: str) -> str:
    """README text from the ``## heading`` line to the next ``## `` heading."""
    text = README.read_text()
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    from pipeline.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def command_lines(text: str) -> list[str]:
    """``segpipe ...`` commands of a code block, continuation lines (indented) joined to their command."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("segpipe "):
            lines.append(line)
        elif line.startswith(" ") and line.strip() and lines:
            lines[-1] += " " + line.strip()
    return lines


# ---------------------------------------------------------------------------------------------
# commands


def synopsis() -> dict[str, str]:
    """``{subcommand: its synopsis line}`` from the code block under "## Commands"."""
    block = next(f for f in fences(README) if f.text.startswith("segpipe ") and "[--device DEV]" in f.text)
    return {line.split()[1]: line for line in command_lines(block.text)}


def test_command_synopsis_lists_every_command_option_and_input():
    documented = synopsis()
    parsers = subparsers()
    assert set(documented) == set(parsers), "README '## Commands' and pipeline/cli.py COMMANDS differ"
    for name, parser in parsers.items():
        options = {s for a in parser._actions for s in a.option_strings if s.startswith("--")} - {"--help", "--verbose"}
        written = set(re.findall(r"--[a-z][\w-]*", documented[name]))
        assert written == options, f"segpipe {name}: README lists {sorted(written - options)} the parser lacks, lacks {sorted(options - written)}"
        for action in parser._actions:
            if not action.option_strings and action.dest != "help":
                metavar = action.metavar or action.dest
                assert re.search(rf"\b{re.escape(metavar)}\b", documented[name]), f"segpipe {name}: input {metavar} not in the README synopsis"


def test_device_values_the_readme_names_parse():
    text = section("Commands")
    sentence = re.search(r"`DEV` is (.*?)\.", text, flags=re.S).group(1)
    values = re.findall(r"`([^`]+)`", sentence)
    assert "auto" in values and "cpu" in values, sentence
    parser = subparsers()["raster"]
    for value in values:
        device = value.replace(":N", ":1")
        assert parser.parse_args(["x.tif", "--model", "m", "--out", "o", "--device", device]).device == device


def doc_commands() -> list[tuple[Fence, str]]:
    return [(f, line) for path in DOCS for f in fences(path) if f.lang in ("", "bash", "sh") for line in command_lines(f.text)]


def test_every_segpipe_command_in_a_code_block_parses():
    from pipeline.cli import build_parser, parse_args

    runnable = [(f, line) for f, line in doc_commands() if "[" not in line and "..." not in line]  # the synopsis is checked above
    assert len(runnable) >= 2, "expected the raster and volume examples"
    outs: dict[str, set[Path]] = {}
    for fence, line in runnable:
        argv = shlex.split(line, comments=True)[1:]
        try:
            args = parse_args(build_parser(), argv)
        except SystemExit:
            pytest.fail(f"{fence.path.name}:{fence.line}: does not parse: {line}")
        assert callable(getattr(args, "func", None)), line
        if getattr(args, "out", None) is not None:
            outs.setdefault(args.command, set()).add(Path(args.out))
    # a user runs the examples in order: raster and volume runs refuse each other's stats.zarr
    assert not outs.get("raster", set()) & outs.get("volume", set()), f"the raster and volume examples share --out: {outs}"


def bench_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for each ``python bench/X.py ...`` in code blocks and inline code of the docs."""
    found = []
    pattern = re.compile(r"^(?:\.venv/bin/)?python3? (bench/\S+\.py)\b(.*)$")
    for path in DOCS:
        for f in fences(path):
            for line in f.text.splitlines():
                if pattern.match(line.strip()):
                    found.append((f"{path.name}:{f.line}", line.strip()))
        for span in inline_code(path.read_text()):
            if pattern.match(span.strip()):
                found.append((path.name, span.strip()))
    return found


def argparse_flags(script: Path) -> set[str]:
    """The option strings a script's ``add_argument`` calls define (read from its source, not run)."""
    flags = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return flags


def test_bench_commands_name_scripts_and_flags_that_exist():
    commands = bench_commands()
    assert len(commands) >= 10, commands
    for where, command in commands:
        words = shlex.split(command, comments=True)
        script = REPO / words[1]
        assert script.is_file(), f"{where}: {words[1]} does not exist"
        unknown = {w.split("=")[0] for w in words[2:] if w.startswith("--")} - argparse_flags(script) - {"--help"}
        assert not unknown, f"{where}: {words[1]} has no option {sorted(unknown)}: {command}"


# ---------------------------------------------------------------------------------------------
# quick start: the two commands are what make and CI run


def make_recipes() -> dict[str, tuple[str, str]]:
    """``{target: (prerequisites, recipe)}`` of the Makefile (recipes are the tab-indented lines)."""
    rules, target = {}, None
    for line in (REPO / "Makefile").read_text().splitlines():
        rule = re.match(r"^([^\s:#=?]+):(?!=)(.*)$", line)
        if rule:
            target = rule.group(1)
            rules[target] = (rule.group(2).strip(), "")
        elif line.startswith("\t") and target:
            rules[target] = (rules[target][0], rules[target][1] + line.strip() + "\n")
    return rules


def test_quick_start_commands_are_what_make_and_ci_run():
    quick = next(f for f in fences(README) if "make demo" in f.text).text
    assert re.search(r"^make demo\b", quick, re.M) and re.search(r"^make test\b", quick, re.M)
    rules = make_recipes()
    installed = "$(VENV)/.installed"
    assert installed in rules["demo"][0] and installed in rules["test"][0] and installed in rules["install"][0]
    assert re.search(r"\bsegpipe demo$", rules["demo"][1].strip()), rules["demo"]
    assert re.search(r"\bpytest\b", rules["test"][1]), rules["test"]
    setup = rules[installed][1]
    assert "-m venv" in setup and "-c constraints.txt" in setup and "-e '.[test]'" in setup and "$(TORCH)" in setup, setup
    assert re.search(r"^make test$", (REPO / ".ci" / "run").read_text(), re.M), ".ci/run must run the README's `make test`"
    # "make install TORCH=torch" (GPU install) and the quick part of the suite (Development)
    assert "TORCH ?=" in (REPO / "Makefile").read_text()
    assert "slow:" in (REPO / "pyproject.toml").read_text() and '-m "not slow"' in README.read_text()


# ---------------------------------------------------------------------------------------------
# python blocks and outputs, against one real demo run


@pytest.fixture(scope="module")
def demo(demo_run):
    code, out, _ = demo_run
    assert code == 0 and out.name == "segpipe-demo"
    return out


def python_blocks() -> list[Fence]:
    return [f for path in DOCS for f in fences(path) if f.lang == "python" and "stats.zarr" in f.text]


def test_python_blocks_run_against_the_demo_outputs(demo, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 2, "expected the land-cover and CT query blocks"
    monkeypatch.chdir(demo.parent)  # the blocks name segpipe-demo/..., as `make demo` writes it
    for block in blocks:
        namespace: dict = {}
        exec(compile(block.text, f"{block.path.name}:{block.line}", "exec"), namespace)
        for line in block.text.splitlines():
            name = re.match(r"^(\w+) = ", line)
            dims = re.search(r"#.*\bdims: ([\w, ]+)$", line)
            rows = re.search(r"#.*\brow per ([\w, ]+)$", line)
            if name and dims:
                expected = tuple(d.strip() for d in dims.group(1).split(","))
                assert namespace[name.group(1)].dims == expected, f"{block.path.name}:{block.line}: {line}"
            if name and rows:
                expected = [d.strip() for d in rows.group(1).split(",")]
                assert list(namespace[name.group(1)].index.names) == expected, f"{block.path.name}:{block.line}: {line}"
    assert (demo.parent / "forest-northfield.png").stat().st_size > 0


def test_model_spec_block_is_a_valid_spec_that_runs(tmp_path):
    import yaml

    from models.probe import probe_network
    from models.registry import build_network
    from models.spec import spec_from_dict

    block = next(f for f in fences(README) if f.lang == "yaml" and f.text.startswith("name:"))
    spec = spec_from_dict(yaml.safe_load(block.text), source=tmp_path / "spec.yaml")
    assert spec.checkpoint is not None  # the block shows where weights go
    probe_network(spec, build_network(spec))  # the load-time check: (1, in_channels, *window) -> (1, n_classes, *window)


def promised(pattern: str, text: str) -> set[str]:
    """Suffixes of the inline code spans ``<prefix>SUFFIX`` matching ``pattern`` (one group: the suffix)."""
    return {m.group(1) for span in inline_code(text) if (m := re.fullmatch(pattern, span))}


def test_promised_output_files_exist_after_the_demo(demo):
    land, ct = section("Land cover"), section("CT/MRI")
    scene = promised(r"out/<stem>(\.[\w.]+)", land)
    assert {".labels.tif", ".quicklook.png"} <= scene, scene
    for suffix in scene:
        assert (demo / "landcover" / f"demo-scene{suffix}").is_file(), suffix
    assert "`.aux.xml`" in land and (demo / "landcover" / "demo-scene.labels.tif.aux.xml").is_file()
    assert "out/stats.zarr" in promised(r"(out/stats\.zarr)", land) and (demo / "landcover" / "stats.zarr").is_dir()
    assert "`out/.work/<stem>.zarr` (removed after success" in land.replace("\n", " ") and not (demo / "landcover" / ".work").exists()

    study = promised(r"S(\.[\w.]+)", ct)
    assert {".labels.nii.gz", ".labels.json", ".labels.txt", ".labels.ctbl", ".stats.json", ".seg.dcm"} <= study, study
    for suffix in study - {".seg.dcm"}:
        assert (demo / "ct" / f"demo-ct{suffix}").is_file(), suffix
    assert not (demo / "ct" / "demo-ct.seg.dcm").exists()  # "for DICOM input": the demo CT is NIfTI
    assert promised(r"(out-ct/stats\.zarr)", ct) and (demo / "ct" / "stats.zarr").is_dir()


def names_in(text: str) -> set[str]:
    """Lower-case identifiers in inline code; ``a_b/c/d`` expands to ``a_b``, ``a_c``, ``a_d``."""
    names = set()
    for span in inline_code(text):
        if re.fullmatch(r"[a-z][a-z0-9_]*(/[a-z0-9]+)*", span):
            first, *rest = span.split("/")
            names.add(first)
            names |= {first.rsplit("_", 1)[0] + "_" + r for r in rest}
    return names


def bullet(text: str, start: str) -> str:
    """The Markdown list item of ``text`` that begins with ``- start``."""
    begin = text.index(f"\n- {start}")
    end = re.search(r"\n(- |\n)", text[begin + 1 :])
    return text[begin : begin + 1 + end.start()] if end else text[begin:]


def test_stats_variables_are_what_the_readme_names(demo):
    import json

    import xarray as xr

    land, ct = section("Land cover"), section("CT/MRI")
    checks = (
        ("landcover", land, bullet(land, "`out/stats.zarr`"), set()),
        ("ct", ct, bullet(ct, "`S.stats.json`"), set(json.loads((demo / "ct" / "demo-ct.stats.json").read_text()))),
    )
    for kind, text, item, json_keys in checks:
        ds = xr.open_zarr(demo / kind / "stats.zarr")
        stored = set(ds.variables)
        named = names_in(item)
        assert named, item
        assert not named - stored - json_keys, f"README names {sorted(named - stored - json_keys)}, not in {kind}/stats.zarr"
        assert not stored - names_in(text), f"{kind}/stats.zarr holds {sorted(stored - names_in(text))}, not in the README"


# ---------------------------------------------------------------------------------------------
# names of files and code


REPO_PATH = re.compile(r"(?:pipeline|models|flows|catalogs|tests|deploy|bench|docs|\.ci)/[\w./-]*|Makefile|constraints\.txt|pyproject\.toml")
NOT_REPO_PATHS = {"models/model.pt"}  # inside a MONAI bundle (`monai-bundle` architecture)


def test_repository_paths_and_python_names_in_the_docs_exist():
    for path in DOCS:
        spans = inline_code(path.read_text())
        for span in spans:
            for word in span.split():
                if REPO_PATH.fullmatch(word) and word not in NOT_REPO_PATHS:
                    assert (REPO / word).exists(), f"{path.name}: `{span}` names {word}, which is not in the repository"
            dotted = re.fullmatch(r"((?:pipeline|models|flows)(?:\.\w+)+)(?:\(.*)?", span)
            imported = re.fullmatch(r"from ((?:pipeline|models|flows)[\w.]*) import (\w+)", span)
            if dotted:
                resolve(dotted.group(1), f"{path.name}: `{span}`")
            if imported:
                resolve(f"{imported.group(1)}.{imported.group(2)}", f"{path.name}: `{span}`")


def resolve(dotted: str, where: str) -> None:
    """Import the longest module prefix of ``dotted`` and get the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"{where}: {'.'.join(parts[:cut])} has no {attr}"
            obj = getattr(obj, attr)
        return
    pytest.fail(f"{where}: no module {dotted}")


# ---------------------------------------------------------------------------------------------
# docs/CONTRIBUTING-helpers.md: the pieces and the engine API it tells engineers to use

CONTRIBUTING = REPO / "docs" / "CONTRIBUTING-helpers.md"
CLI_ITEM_WORDS = {"register", "set_defaults", "func"}  # the pipeline/cli.py item describes each command module's API


def test_contributing_names_the_functions_its_modules_hold():
    text = CONTRIBUTING.read_text()
    mentions = list(re.finditer(r"\b((?:pipeline|models|flows)/[\w/]+\.py)\b", text))
    checked = 0
    for i, m in enumerate(mentions):
        end = mentions[i + 1].start() if i + 1 < len(mentions) else len(text)
        words = re.split(r"\n(?:- |    |\n)", text[m.end() : end])[0]  # up to the next item, code or paragraph
        module = importlib.import_module(m.group(1)[:-3].replace("/", "."))
        for name in set(re.findall(r"(?<![\w.])([A-Za-z_]\w*)\(", words)) - (CLI_ITEM_WORDS if m.group(1) == "pipeline/cli.py" else set()):
            assert hasattr(module, name), f"CONTRIBUTING-helpers.md: {m.group(1)} has no {name}"
            checked += 1
    assert checked >= 20


def test_contributing_engine_api_snippet_runs():
    import inspect

    code: list[str] = []  # the indented (4 spaces) code lines, deeper-indented continuation lines joined
    for line in CONTRIBUTING.read_text().splitlines():
        if line.startswith("     ") and code:
            code[-1] += " " + line.strip()
        elif line.startswith("    "):
            code.append(line[4:])
    statements = [line for line in code if line.startswith(("from ", "cfg = ", "report = "))]
    assert len(statements) >= 3, statements
    namespace: dict = {}
    for line in statements:
        if line.startswith("report = "):  # needs an image and a model: bind the call to the signature instead
            call = ast.parse(line).body[0].value
            names = [a.id for a in call.args]
            keywords = {k.arg: None for k in call.keywords}
            inspect.signature(namespace[call.func.id]).bind(*names, **keywords)
        else:
            exec(line, namespace)
    assert namespace["cfg"].window == (512, 512)
