"""Batch provisioning: a manifest (CSV) of boards, each flashed (when the row names an
image), deployed and self-tested, several ports at a time, past failures, resumable.

Manifest columns: ``port`` (a serial port, or ``next``: the next board plugged in),
``board``, ``device_code`` (required), ``site`` (free text for the report), ``image`` (a
MicroPython image to flash first), and ``config.KEY`` columns for per-board settings
(``config.unit`` = 3). The report (JSON and CSV) has a row per board:
device code, chip MAC, firmware version, result, duration, error. A run with an existing
report skips the boards it records as passed.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REQUIRED = ("port", "board", "device_code")
REPORT_FIELDS = (
    "device_code",
    "board",
    "port",
    "site",
    "chip_mac",
    "micropython",
    "firmware_version",
    "result",
    "duration_s",
    "error",
    "finished_at",
)


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the file, the row and the fix."""


@dataclass
class Row:
    line: int
    port: str
    board: str
    device_code: str
    site: str = ""
    image: str = ""
    config: dict[str, Any] = field(default_factory=dict)


SAVE_AS = 'save it from Excel as "CSV UTF-8 (Comma delimited)", or as UTF-8 in your editor'


def _manifest_text(path: Path) -> str:
    """The manifest's text. Excel writes CSV as UTF-8 with a byte order mark ("CSV UTF-8")
    or in the PC's code page ("CSV"); editors write plain UTF-8. The two UTF-8 forms are
    read; anything else is refused with the line of the first byte that is not UTF-8,
    because guessing a code page turns a street name into mojibake on the label."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: {exc.strerror}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ManifestError(f'{path}: this is UTF-16 (Excel\'s "Unicode Text"); {SAVE_AS}')
    if b"\0" in data:
        raise ManifestError(f"{path}: not a CSV text file (it holds binary data); {SAVE_AS}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            f"{path}:{line}: byte {data[exc.start]:#04x} is not UTF-8 (the file is in another "
            f"encoding, e.g. Latin-1 or Windows-1252); {SAVE_AS}"
        ) from None


def _manifest_records(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and each row as (line number where the row starts, column -> value).
    CSV syntax errors (a quote never closed, text after a closing quote) and rows with
    more fields than the header are reported at the line a person finds them on."""
    lines = text.splitlines()
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] = []
    records: list[tuple[int, dict[str, str]]] = []
    problems: list[str] = []
    start = 1
    try:
        for fields in reader:
            if not header:
                header = [f.strip() for f in fields]
            elif any(f.strip() for f in fields):
                if len(fields) > len(header):
                    problems.append(
                        f"{path}:{start}: {len(fields)} fields but the header has "
                        f'{len(header)}: put a value that holds a comma in quotes ("Main St, 1")'
                    )
                padded = fields + [""] * (len(header) - len(fields))
                records.append((start, dict(zip(header, padded, strict=False))))
            start = reader.line_num + 1
    except csv.Error as exc:
        if "end of data" in str(exc):
            opened = _opening_quote_line(lines, start)
            raise ManifestError(
                f'{path}:{opened}: CSV syntax error: the quote (") opened on line {opened} is '
                "never closed; close it or remove it"
            ) from None
        raise ManifestError(
            f"{path}:{reader.line_num}: CSV syntax error: {exc} (quote whole values only: "
            '"Main St 1")'
        ) from None
    if problems:
        raise ManifestError("\n".join(problems))
    return header, records


def _opening_quote_line(lines: list[str], start: int) -> int:
    # the line of the quote that is still open at the end of the file ("" is a quote inside
    # a quoted value and toggles twice)
    opened, inside = start, False
    for n, line in enumerate(lines[start - 1 :], start):
        for ch in line:
            if ch == '"':
                inside = not inside
                opened = n if inside else opened
    return opened


def read_manifest(path: Path) -> list[Row]:
    from polekit.boards import BoardError, load
    from polekit.protocols import identity

    header, records = _manifest_records(path, _manifest_text(path))
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ManifestError(
            f"{path}: no column {', '.join(missing)}; the header must name at least "
            f"{', '.join(REQUIRED)} (optional: site, image, config.KEY)"
        )
    rows: list[Row] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, raw in records:
        values = {k: v.strip() for k, v in raw.items() if k}
        code = values["device_code"]
        try:
            identity.parse(code)
        except ValueError as exc:
            problems.append(f"{path}:{n}: {exc}")
        if code in seen:
            problems.append(f"{path}:{n}: device code {code} is also on line {seen[code]}")
        seen[code] = n
        try:
            load(values["board"])
        except BoardError as exc:
            problems.append(f"{path}:{n}: {exc}")
        if not values["port"]:
            problems.append(f"{path}:{n}: port is empty")
        config: dict[str, Any] = {}
        for key, value in values.items():
            if key.startswith("config.") and value:
                try:
                    config[key[7:]] = json.loads(value)
                except ValueError:
                    config[key[7:]] = value
        rows.append(
            Row(
                n,
                values["port"],
                values["board"],
                code,
                values.get("site", ""),
                values.get("image", ""),
                config,
            )
        )
    problems += settings_and_image_problems(path, rows)
    if problems:
        raise ManifestError("\n".join(problems))
    if not rows:
        raise ManifestError(f"{path}: no boards listed under the header")
    return rows


def settings_and_image_problems(path: Path, rows: list[Row]) -> list[str]:
    """Each row's config.* settings (the node's own schema, as ``deploy --set``) and its
    image (an ESP image for the board's chip that fits its flash), checked before any
    board is touched: one line per problem, with the file and line. Rows whose board is
    unknown are skipped (that is reported on its own)."""
    from polekit.boards import BoardError, load
    from polekit.firmware.deploy.deploy import settings_problems
    from polekit.firmware.deploy.flash import FlashError, check_image

    problems: list[str] = []
    images: dict[tuple[str, str], str | None] = {}  # (image, board) -> problem: read once
    for row in rows:
        try:
            board = load(row.board)
        except BoardError:
            continue
        for key, why in settings_problems(board, row.config).items():
            problems.append(f"{path}:{row.line}: config.{key}: {why}")
        if row.image:
            if (row.image, board.name) not in images:
                try:
                    check_image(Path(row.image), board, "in the image column")
                    images[row.image, board.name] = None
                except FlashError as exc:
                    images[row.image, board.name] = str(exc)
            if images[row.image, board.name]:
                problems.append(f"{path}:{row.line}: image {images[row.image, board.name]}")
    return problems


@dataclass
class Outcome:
    device_code: str
    board: str
    port: str
    site: str = ""
    chip_mac: str = ""
    micropython: str = ""
    firmware_version: str = ""
    result: str = "fail"
    duration_s: float = 0.0
    error: str = ""
    finished_at: str = ""


def report_paths(manifest: Path, report: Path | None) -> tuple[Path, Path]:
    base = report or manifest.with_name(manifest.stem + "-report")
    base = base.with_suffix("") if base.suffix in (".json", ".csv") else base
    return base.with_suffix(".json"), base.with_suffix(".csv")


def load_report(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {b["device_code"]: b for b in data.get("boards", [])}


def write_report(json_path: Path, csv_path: Path, outcomes: list[dict[str, Any]]) -> None:
    json_path.write_text(json.dumps({"boards": outcomes}, indent=1) + "\n")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REPORT_FIELDS)
        writer.writeheader()
        for o in outcomes:
            writer.writerow({k: o.get(k, "") for k in REPORT_FIELDS})


def _mac(unique_id: str) -> str:
    return ":".join(unique_id[i : i + 2] for i in range(0, min(len(unique_id), 12), 2)).upper()


Step = Callable[[Row, str, int, int], None]  # (row, what, done, total)
NEXT = "next"  # the port column's "the next board plugged in"


def _serial_ports() -> set[str]:
    from serial.tools import list_ports

    return {p.device for p in list_ports.comports()}


def _next_boards(
    rows: list[Row],
    list_ports: Callable[[], set[str]],
    timeout_s: float,
    note: Step,
    start: Callable[[Row], None],
    failed: Callable[[Row, str], None],
) -> None:
    """Give each row the next port that appears, and start its job at once."""
    known = list_ports()
    for row in rows:
        note(row, "plug in", 0, 1)
        deadline = time.monotonic() + timeout_s
        new: set[str] = set()
        while not new and time.monotonic() < deadline:
            time.sleep(0.2)
            now = list_ports()
            new = now - known
            known &= now  # a board unplugged and plugged again counts as new
        if not new:
            failed(row, f"no new board was plugged in within {timeout_s:.0f} s")
            continue
        port = sorted(new)[0]
        known.add(port)
        row.port = port
        start(row)


def provision_one(
    row: Row, step: Step, bundles: dict[Any, Any], ota_key: bytes | None = None
) -> Outcome:
    from polekit.firmware.deploy.deploy import DeployError, deploy
    from polekit.firmware.deploy.link import LinkError

    started = time.monotonic()
    out = Outcome(row.device_code, row.board, row.port, row.site)
    try:
        if row.image:
            from polekit.firmware.deploy.flash import FlashError, flash_image

            try:
                flash_image(
                    row.port,
                    Path(row.image),
                    row.board,
                    progress=lambda done, total: step(row, "flash", done, total),
                )
            except FlashError as exc:
                raise DeployError(str(exc)) from None
        report = deploy(
            row.port,
            row.board,
            row.device_code,
            row.config,
            progress=lambda what, done, total: step(row, what, done, total),
            bundles=bundles,
            ota_key=ota_key,
        )
        out.chip_mac = _mac(report.unique_id)
        out.micropython = report.micropython
        out.firmware_version = report.firmware_version
        out.result = "pass" if report.passed else "fail"
        out.error = "" if report.passed else "self-test: " + report.failures()
    except (DeployError, LinkError, OSError) as exc:
        out.error = " ".join(str(exc).split()) or type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - one board's surprise is recorded; the batch goes on
        out.error = f"{type(exc).__name__}: {exc}"
    out.duration_s = round(time.monotonic() - started, 2)
    out.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return out


def provision(
    manifest: Path,
    jobs: int = 2,
    report: Path | None = None,
    step: Step | None = None,
    retry_passed: bool = False,
    list_ports: Callable[[], set[str]] | None = None,
    plug_timeout_s: float = 300,
    ota_key: bytes | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """Provision the manifest's boards; (report rows, boards run now, boards skipped as
    already passed). The report is rewritten after each board, so an interrupted run loses
    nothing that finished. Rows whose port is ``next`` take the next serial port that
    appears (``list_ports`` lists the present ones), one after the other, while the boards
    already plugged in are being worked on. ``ota_key``: the update key every board gets
    (deploy's /ota.pub)."""
    rows = read_manifest(manifest)
    json_path, csv_path = report_paths(manifest, report)
    previous = {} if retry_passed else load_report(json_path)
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for row in rows:
        before = previous.get(row.device_code)
        if before and before.get("result") == "pass":
            results[row.device_code] = before
        else:
            todo.append(row)
    lock = threading.Lock()
    bundles: dict[Any, Any] = {}
    note = step or (lambda row, what, done, total: None)
    stop = threading.Event()
    doing: dict[str, str] = {}  # device code -> the step it is in

    def track(row: Row, what: str, done: int, total: int) -> None:
        if stop.is_set():
            raise _StopWork  # Ctrl-C: leave the board at the next step
        doing[row.device_code] = what
        note(row, what, done, total)

    def save() -> None:
        ordered = [results[r.device_code] for r in rows if r.device_code in results]
        write_report(json_path, csv_path, ordered)

    def work(row: Row) -> None:
        outcome = provision_one(row, track, bundles, ota_key)
        track(row, outcome.result, 1, 1)
        with lock:
            results[row.device_code] = asdict(outcome)
            save()

    def work_failed(row: Row, why: str) -> None:
        out = Outcome(row.device_code, row.board, row.port, row.site, error=why)
        out.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        track(row, "fail", 1, 1)
        with lock:
            results[row.device_code] = asdict(out)
            save()

    slots = threading.Semaphore(max(1, jobs))

    def work_chain(chain: list[Row]) -> None:
        with slots:
            for row in chain:
                work(row)

    # Daemon threads, not a pool: Ctrl-C ends the batch at once, whatever a board is in
    # the middle of (a deploy cut off is redone by the next run); a pool would be waited for.
    threads: list[threading.Thread] = []
    crashed: list[BaseException] = []

    def spawn(target: Callable[..., None], *args: Any) -> None:
        def body() -> None:
            try:
                target(*args)
            except _StopWork:
                pass
            except BaseException as exc:  # noqa: BLE001 - raised again by the main thread
                crashed.append(exc)

        thread = threading.Thread(target=body, daemon=True)
        threads.append(thread)  # before it starts: the main thread waits for every one
        thread.start()

    # one port, one job at a time: rows sharing a port run in order
    by_port: dict[str, list[Row]] = {}
    for row in todo:
        by_port.setdefault(row.port, []).append(row)
    plugged = by_port.pop(NEXT, [])
    try:
        for chain in by_port.values():
            spawn(work_chain, chain)
        if plugged:
            spawn(
                _next_boards,
                plugged,
                list_ports or _serial_ports,
                plug_timeout_s,
                track,
                lambda row: spawn(work_chain, [row]),
                work_failed,
            )
        waited = 0
        while waited < len(threads):  # the plug-in waiter adds threads as boards arrive
            threads[waited].join()
            waited += 1
    except KeyboardInterrupt:
        stop.set()
        lock.acquire()  # held to the end: no board is recorded after this report
        save()
        raise BatchInterrupted(
            [results[r.device_code] for r in todo if r.device_code in results],
            {
                r.device_code: doing[r.device_code]
                for r in todo
                if r.device_code in doing and r.device_code not in results
            },
            [r.device_code for r in todo if r.device_code not in doing],
            (json_path, csv_path),
        ) from None
    if crashed:
        raise crashed[0]
    save()
    return [results[r.device_code] for r in rows], len(todo), len(rows) - len(todo)


class _StopWork(BaseException):
    """Raised in a worker at its next step once the batch is interrupted."""


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch. ``finished``: report rows of the boards done in this run (in
    the report already); ``cut_off``: device code -> the step it was in (redone by the next
    run); ``not_started``: device codes; ``report``: the report's JSON and CSV paths."""

    def __init__(
        self,
        finished: list[dict[str, Any]],
        cut_off: dict[str, str],
        not_started: list[str],
        report: tuple[Path, Path],
    ) -> None:
        super().__init__(f"{len(finished)} boards finished")
        self.finished = finished
        self.cut_off = cut_off
        self.not_started = not_started
        self.report = report
