"""Errors speak the user's language: no internal identifiers (constants, function names,
module paths, Python type names) in what a person reads; the valid choices instead."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

# host code whose exception messages reach people (the node's MicroPython modules and the
# emulator's ROM modules speak the chip's own errors)
AREAS = (
    "protocols",
    "gateway",
    "firmware/deploy",
    "firmware/install.py",
    "hil",
    "boards",
    "polekit",
)
SKIP = ("hil/vmlib", "hil/suite")


def _sources() -> list[Path]:
    files: list[Path] = []
    for area in AREAS:
        path = ROOT / area
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return [f for f in files if not any(f.is_relative_to(ROOT / s) for s in SKIP)]


def _internal_names(trees: list[ast.Module]) -> set[str]:
    # module-level CONSTANTS and snake_case functions: names only a reader of the code knows
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = node.name.lstrip("_")
                if "_" in name:
                    names.add(name)
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                if isinstance(t, ast.Name) and re.fullmatch(r"_?[A-Z][A-Z0-9]*_[A-Z0-9_]+", t.id):
                    names.add(t.id.lstrip("_"))
    return names


def _message_texts(tree: ast.Module) -> list[tuple[int, str]]:
    # the literal text of every raised exception's message
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for arg in node.exc.args:
                for part in ast.walk(arg):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        out.append((node.lineno, part.value))
    return out


def test_no_raised_message_names_an_internal_identifier() -> None:
    sources = _sources()
    trees = [ast.parse(f.read_text(), str(f)) for f in sources]
    internal = _internal_names(trees)
    assert {"DEVICE_TYPES", "load_config", "register_map"} <= internal  # the scan sees them
    found = []
    for path, tree in zip(sources, trees, strict=True):
        for line, text in _message_texts(tree):
            words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
            named = sorted(words & internal)
            if named or re.search(r"\bpolekit\.[a-z_]+\.", text):
                found.append(f"{path.relative_to(ROOT)}:{line}: {text!r} names {named}")
    assert not found, "\n".join(found)


BAD_INPUTS = [
    (["code", "make", "371600", "XX", "1"], "known types: PL, EN"),
    (["code", "check", "371600XX0000011"], "known types: PL, EN"),
    (["protocols", "maps", "pole-envv"], "known: pole-env, sdm120"),
    (["boards", "show", "pole-esp32"], "known boards: community-sos-esp32c3"),
    (["emulate", "--bare", "--unique-id", "24:0A:C4"], "12 hex digits"),
]


@pytest.mark.parametrize("args,says", BAD_INPUTS, ids=[" ".join(a[:2]) for a, _ in BAD_INPUTS])
def test_a_bad_input_is_answered_with_the_valid_choices(args: list[str], says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "polekit", *args], capture_output=True, text=True, timeout=60
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0 and says in out, out
    assert not re.search(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b", out), out  # no CONSTANT_NAMES
    assert "Traceback" not in out and "see DEVICE_TYPES" not in out, out


def test_a_config_with_an_unknown_device_type_lists_the_known_ones(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "gw"\n'
        '[[bus]]\nname = "b"\ntype = "tcp"\nhost = "127.0.0.1"\n'
        '[[device]]\ncode = "371600XX0000011"\nbus = "b"\nmap = "sdm120"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "polekit", "gateway", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "device type 'XX' is unknown; known types: PL" in out, out
    assert "DEVICE_TYPES" not in out
