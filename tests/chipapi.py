"""The ESP32's MicroPython API as the chip has it, for the host's checks of firmware and emulator.

The reference is something we did not write: ``micropython-esp32-stubs`` and
``micropython-stdlib-stubs`` pinned to MicroPython 1.27 (the version of the WebAssembly port
the emulated board runs, package.json), corrected where they are wrong by the small files in
``tests/chip_overrides/`` (each correction cites the C source line it was checked against).

- ``typeshed()`` merges the two stub packages and the corrections into one typeshed folder
  (build/chip-typeshed): the chip's modules are its standard library there, so mypy checks
  firmware against them and, as with any typeshed, does not report the stubs' own nits.
- ``typecheck(paths)`` runs mypy on MicroPython code the way the board imports it: the node
  as ``node`` (lib/node on the flash), protocols/ as ``protocols``.
- ``signatures(module)`` reads a chip module's classes, functions and constants from the
  merged stubs, for the emulator's conformance test (tests/test_chip_conformance.py).

Run as a script (``make typecheck`` does) it type-checks firmware/node and protocols/.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = Path(__file__).resolve().parent / "chip_overrides"
MICROPYTHON = "1.27"  # package.json: @micropython/micropython-webassembly-pyscript 1.27.0
STUBS = {"micropython-esp32-stubs": "1.27.0.post1", "micropython-stdlib-stubs": "1.27.0.post2"}
# MicroPython code the host checks against the chip, and how the board imports it
FIRMWARE_PATHS = ("firmware/node", "protocols")


class StubsMissingError(RuntimeError):
    """The pinned stub packages are not installed (``make setup`` installs them)."""


def _dist_root(name: str) -> tuple[Path, list[str]]:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise StubsMissingError(f"{name} is not installed: run `make setup`") from None
    if dist.version != STUBS[name]:
        raise StubsMissingError(
            f"{name} {dist.version} is installed, the checks need {STUBS[name]} "
            f"(MicroPython {MICROPYTHON}): run `make setup`"
        )
    files = [str(f) for f in dist.files or () if str(f).endswith(".pyi") or f.name == "VERSIONS"]
    return Path(str(dist.locate_file(""))), files


def _write(path: Path, text: str) -> None:
    # unchanged files keep their time stamp, so mypy's cache stays warm
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def typeshed(dest: Path = ROOT / "build" / "chip-typeshed") -> Path:
    """The merged typeshed folder (created or refreshed): MicroPython's stdlib stubs, the
    ESP32 port's modules and ``_mpy_shed`` beside them, corrections applied."""
    stdlib = dest / "stdlib"
    lib_root, lib_files = _dist_root("micropython-stdlib-stubs")
    port_root, port_files = _dist_root("micropython-esp32-stubs")
    wanted: dict[Path, str] = {}
    for rel in lib_files:
        if rel.startswith(("stdlib/", "stubs/")):
            wanted[dest / rel] = (lib_root / rel).read_text()
        elif rel.startswith("_mpy_shed/"):
            wanted[stdlib / rel] = (lib_root / rel).read_text()
    top = {"_mpy_shed"}
    for rel in port_files:
        wanted[stdlib / rel] = (port_root / rel).read_text()
        top.add(rel.split("/")[0].removesuffix(".pyi"))
    versions = stdlib / "VERSIONS"
    listed = {line.split(":")[0] for line in wanted[versions].splitlines() if ":" in line}
    extra = "".join(f"{m}: 3.0-\n" for m in sorted(top - listed))
    wanted[versions] += "\n# the ESP32 port's own modules (tests/chipapi.py)\n" + extra
    for patch in sorted(OVERRIDES.glob("*.pyi")):
        target = stdlib / patch.name
        wanted[target] = apply_override(wanted[target], patch.read_text())
    for path, text in wanted.items():
        _write(path, text)
    return dest


def _members(tree: ast.Module | ast.ClassDef) -> dict[str, list[ast.stmt]]:
    out: dict[str, list[ast.stmt]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.setdefault(node.name, []).append(node)
    return out


def _span(node: ast.stmt) -> tuple[int, int]:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    assert node.end_lineno is not None
    return first - 1, node.end_lineno


def apply_override(stub: str, override: str) -> str:
    """``stub`` with each function of ``override`` (top level, or a method inside a class of
    the same name) in place of all the stub's definitions of that name, overloads included."""
    lines = stub.splitlines(keepends=True)
    src = override.splitlines(keepends=True)
    edits: list[tuple[int, int, list[str]]] = []

    def patch(have: dict[str, list[ast.stmt]], new: dict[str, list[ast.stmt]], indent: str) -> None:
        for name, nodes in new.items():
            old = have.get(name)
            if not old:
                raise ValueError(f"override {name}: the stub has no such name")
            body: list[str] = []
            for node in nodes:
                a, b = _span(node)
                base = len(src[a]) - len(src[a].lstrip())
                body += [indent + line[base:] if line.strip() else line for line in src[a:b]]
            spans = [_span(n) for n in old]
            edits.append((min(s for s, _ in spans), max(e for _, e in spans), body))

    top = _members(ast.parse(stub))
    tree = ast.parse(override)
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            cls = next((n for n in top.get(node.name, []) if isinstance(n, ast.ClassDef)), None)
            if cls is None:
                raise ValueError(f"override class {node.name}: the stub has no such class")
            patch(_members(cls), _members(node), " " * cls.body[0].col_offset)
    patch(top, {k: v for k, v in _members(tree).items() if not isinstance(v[0], ast.ClassDef)}, "")
    for a, b, body in sorted(edits, reverse=True):
        lines[a:b] = body
    return "".join(lines)


def typecheck(
    paths: tuple[str, ...] = FIRMWARE_PATHS, cwd: Path = ROOT, cache_dir: Path | None = None
) -> subprocess.CompletedProcess:
    """mypy on MicroPython code against the chip's API; returns the finished process.

    ``firmware/node`` is checked as the package ``node`` and ``protocols`` as ``protocols``,
    as the board imports them from /lib; host-only branches (``protocols/ccm.py`` falls back
    to the ``cryptography`` package on CPython) are the only imports let through unresolved.
    """
    shed = typeshed()
    bases = sorted({str((cwd / p).resolve().parent) for p in paths})
    config = shed / "mypy-chip.ini"
    _write(
        config,
        "[mypy]\n"
        "explicit_package_bases = True\n"
        "no_site_packages = True\n"
        "warn_unused_ignores = True\n"
        "check_untyped_defs = True\n"
        "# an empty list or dict needs a type for mypy's inference, not for the chip\n"
        "disable_error_code = var-annotated\n"
        "# protocols/ runs on CPython too: its host-only branch imports cryptography\n"
        "[mypy-cryptography.*]\n"
        "ignore_missing_imports = True\n",
    )
    env = dict(os.environ, MYPYPATH=os.pathsep.join(bases))
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(config),
        "--custom-typeshed-dir",
        str(shed),
        "--cache-dir",
        str(cache_dir or shed.parent / "chip-mypy-cache"),
        *paths,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


# ---- signatures, for the conformance test ------------------------------------------------


@dataclass
class Signature:
    """What a call may pass: parameter names by kind, and which have defaults."""

    posonly: list[str] = field(default_factory=list)
    normal: list[str] = field(default_factory=list)  # by position or by name
    kwonly: list[str] = field(default_factory=list)
    defaults: dict[str, str | None] = field(default_factory=dict)  # name -> literal or None
    varargs: bool = False
    varkw: bool = False

    @property
    def positional(self) -> list[str]:
        return self.posonly + self.normal

    def required(self) -> set[str]:
        return {n for n in self.positional + self.kwonly if n not in self.defaults}


def _literal(node: ast.expr) -> str | None:
    # a default's value as source text, None when a stub says only "..."
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return None
    return ast.unparse(node)


def signature_of(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> Signature:
    """The call signature of ``fn`` (``self``/``cls`` dropped from a method)."""
    a = fn.args
    posonly = [p.arg for p in a.posonlyargs]
    normal = [p.arg for p in a.args]
    is_static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    if method and not is_static:
        if posonly:
            posonly = posonly[1:]
        elif normal:
            normal = normal[1:]
    sig = Signature(posonly, normal, [p.arg for p in a.kwonlyargs])
    sig.varargs, sig.varkw = a.vararg is not None, a.kwarg is not None
    every = [p.arg for p in a.posonlyargs + a.args]
    for name, d in zip(every[len(every) - len(a.defaults) :], a.defaults, strict=True):
        sig.defaults[name] = _literal(d)
    for p, kd in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        if kd is not None:
            sig.defaults[p.arg] = _literal(kd)
    return sig


@dataclass
class Api:
    """One module's public surface: functions (each a list of overloads), classes (their
    methods and constants), module constants (name -> literal value or None)."""

    functions: dict[str, list[Signature]] = field(default_factory=dict)
    classes: dict[str, Api] = field(default_factory=dict)
    constants: dict[str, str | None] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # name -> the name it is bound to
    bases: list[str] = field(default_factory=list)  # a class's base classes, by name


def api_of(body: list[ast.stmt], method: bool = False) -> Api:
    """The surface ``body`` (a module's or a class's statements) defines."""
    api = Api()
    flat: list[ast.stmt] = []
    for node in body:  # both branches of an if: what a module defines on some chip
        flat += node.body + node.orelse if isinstance(node, ast.If) else [node]
    for node in flat:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            api.functions.setdefault(node.name, []).append(signature_of(node, method))
        elif isinstance(node, ast.ClassDef):
            api.classes[node.name] = api_of(node.body, method=True)
            api.classes[node.name].bases = [ast.unparse(b) for b in node.bases]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            value = None if node.value is None else _literal(node.value)
            api.constants[node.target.id] = value
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if not isinstance(target, ast.Name):
                    continue
                if isinstance(node.value, ast.Name):
                    api.aliases[target.id] = node.value.id
                else:
                    api.constants[target.id] = _literal(node.value)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                api.constants[alias.asname or alias.name.split(".")[0]] = "<module>"
    return api


def chip_api(module: str) -> Api:
    """The chip's ``module`` as the merged stubs describe it."""
    path = typeshed() / "stdlib" / f"{module}.pyi"
    api = api_of(ast.parse(path.read_text()).body)
    for name, value in list(api.constants.items()):
        if value == "<module>":  # the stubs' own imports (typing, _mpy_shed) are not the chip's
            del api.constants[name]
    return api


def main() -> int:
    try:
        result = typecheck()
    except StubsMissingError as e:
        print(f"chip type check: {e}", file=sys.stderr)
        return 2
    out = result.stdout.strip()
    print(f"chip type check (MicroPython {MICROPYTHON} ESP32 stubs): {out.splitlines()[-1]}")
    if result.returncode != 0:
        print(out)
        print(result.stderr.strip(), file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
