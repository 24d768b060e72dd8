"""Every device code a person reads is a valid one: each command's --help (the whole click
tree under ``polekit``), README.md and docs/. A code copied from an example must work. A
code shown on purpose as wrong is listed in WRONG with the words that say so on its line."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click

from polekit.cli import main
from polekit.protocols import identity

from conftest import ROOT

# The shape of a code (RRRRRR TT SSSSSS C, protocols/identity.py), loose on purpose: one
# character too many or too few is found too, and then fails identity.parse.
CODE_SHAPE = re.compile(r"(?<![0-9A-Za-z])\d{6}[A-Z]{2}[0-9A-Z]{5,9}(?![0-9A-Za-z])")
# code -> what its line must say: examples of a mistyped code and the error it gets
WRONG = {"371600PL000002B": "check character is 'B', expected 'A' (mistyped?)"}


def help_texts() -> Iterator[tuple[str, str]]:
    """(command path, --help text) of every command and group under ``polekit``."""

    def walk(cmd: click.Command, ctx: click.Context) -> Iterator[tuple[str, str]]:
        yield ctx.command_path, cmd.get_help(ctx)
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, click.Context(sub, info_name=name, parent=ctx))

    yield from walk(main, click.Context(main, info_name="polekit"))


def doc_texts() -> Iterator[tuple[str, str]]:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").iterdir())]:
        if path.is_file() and path.suffix in (".md", ".toml"):
            yield str(path.relative_to(ROOT)), path.read_text()


def bad_codes(where: str, text: str) -> list[str]:
    bad = []
    for line in text.splitlines():
        for code in CODE_SHAPE.findall(line):
            if code in WRONG and WRONG[code] in line:
                continue  # shown as wrong, and its line says so
            try:
                identity.parse(code)
            except ValueError as exc:
                bad.append(f"{where}: {exc}")
    return bad


def test_every_device_code_in_help_texts_and_docs_is_valid() -> None:
    texts = [*help_texts(), *doc_texts()]
    assert {
        "polekit deploy",
        "polekit provision",
        "polekit gateway run",
        "docs/field-guide.md",
    } <= {where for where, _ in texts}
    seen = [code for _, text in texts for code in CODE_SHAPE.findall(text)]
    assert len(seen) >= 15  # the examples are found: the shape matches how codes are written
    bad = [problem for where, text in texts for problem in bad_codes(where, text)]
    assert not bad, "\n".join(bad)


def test_a_wrong_code_is_found_wherever_it_is_written() -> None:
    assert bad_codes("x", "polekit deploy -c 371600PL000001F") == [
        "x: device code '371600PL000001F': check character is 'F', expected 'C' (mistyped?)"
    ]
    assert bad_codes("x", "a code 371600PL00001C, cut short") != []
    assert bad_codes("x", "371600PL000002B with no word that it is wrong") != []
    assert bad_codes("x", "ok: 371600PL000001C, (371600PL000002A)") == []
