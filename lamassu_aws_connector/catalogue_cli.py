"""``events`` and ``validate``: the catalogue for people (and Lambda authors), offline.

``events`` lists the known types; ``events --schemas DIR`` writes one JSON Schema per type (the
committed copy lives in ``docs/events/``). ``validate FILE...`` checks event files as the daemon
would: the CloudEvents envelope, then the data of a known type against its catalogue model. ``-``
reads standard input (one or more events); a directory stands for its ``*.json`` files. Every event
gets its line, whatever happened to the others.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from .catalogue import SPECS, Direction, EventKind, check_data, json_schemas, matched_shapes, specs_for
from .events import Rejection, parse_structured


def list_events(out: TextIO = sys.stdout, *, as_json: bool = False) -> int:
    rows = [spec.listing() for spec in SPECS]
    if as_json:
        out.write(json.dumps(rows, indent=2) + "\n")
        return 0
    width = max(len(row["type"]) for row in rows)
    out.write(f"{'TYPE':<{width}}  {'GENERATION':<13}  {'DIRECTION':<9}  FIELDS\n")
    for row in rows:
        fields = ", ".join(row["fields"])
        out.write(f"{row['type']:<{width}}  {row['generation']:<13}  {row['direction']:<9}  {fields}\n")
    return 0


def write_schemas(directory: Path) -> list[Path]:
    """Write ``<type>.json`` per catalogue entry (``<type>.<direction>.json`` where a type has both)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, schema in json_schemas():
        path = directory / f"{stem}.json"
        path.write_text(render_schema(schema), encoding="utf-8")
        written.append(path)
    return written


def render_schema(schema: dict[str, object]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def validate_files(paths: list[str], out: TextIO = sys.stdout, stdin: BinaryIO | None = None) -> int:
    """One line per event; 0 when every one is valid, 1 otherwise.

    A directory stands for its ``*.json`` files; ``-`` is standard input, which may hold several
    events one after the other (``cat *.json | validate -``): each gets its own line, ``-[2]``...
    """
    failures = 0
    for name, body in _inputs(paths, stdin):
        try:
            verdict = body if isinstance(body, str) else _verdict(body)
        except Exception as exc:  # a bug must not hide the verdicts on the files after this one
            verdict = f"invalid: internal_error: {type(exc).__name__}: {exc}"
        if not verdict.startswith("ok"):
            failures += 1
        out.write(f"{name}: {verdict}\n")
    return 1 if failures else 0


def _inputs(paths: list[str], stdin: BinaryIO | None) -> Iterator[tuple[str, bytes | str]]:
    """(name, body) per event to check, or (name, verdict) when there is nothing to check."""
    for name in paths:
        if name == "-":
            documents = split_documents((stdin or sys.stdin.buffer).read())
            if len(documents) == 1:
                yield name, documents[0]
            else:
                for number, document in enumerate(documents, 1):
                    yield f"-[{number}]", document
            continue
        path = Path(name)
        if path.is_dir():
            files = sorted(path.glob("*.json"))
            if not files:
                yield name, "invalid: a directory without *.json files"
            for file in files:
                yield from _read(str(file))
            continue
        yield from _read(name)


def _read(name: str) -> Iterator[tuple[str, bytes | str]]:
    try:
        yield name, Path(name).read_bytes()
    except OSError as exc:
        yield name, f"invalid: cannot read the file: {exc.strerror}"


def split_documents(data: bytes) -> list[bytes]:
    """Consecutive JSON documents (pretty-printed or one per line) as their own bytes; what cannot be
    split (not UTF-8, not JSON, too deep to scan) stays one document, for the parser to reject clearly."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [data]
    decoder = json.JSONDecoder()
    documents: list[bytes] = []
    position = 0
    while True:
        while position < len(text) and text[position] in " \t\r\n":
            position += 1
        if position >= len(text):
            return documents or [data]
        if text[position] in "[{":
            # Bracket counting, not a parse: however deep a document nests, the next one is still found.
            end = _end_of_container(text, position)
        else:
            try:
                end = decoder.raw_decode(text, position)[1]
            except ValueError:
                end = None
        if end is None:
            documents.append(text[position:].encode())
            return documents
        documents.append(text[position:end].encode())
        position = end


# A JSON string (escapes included) or a bracket: what decides where an object or array ends.
_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*+"|[\[\]{}]', re.DOTALL)


def _end_of_container(text: str, start: int) -> int | None:
    depth = 0
    for match in _STRUCTURE.finditer(text, start):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
        elif token in ("]", "}"):
            depth -= 1
            if depth == 0:
                return match.end()
    return None


def _verdict(body: bytes) -> str:
    note = ""
    try:
        parsed = parse_structured(body.rstrip(b"\r\n"), repair_missing_id=False)
    except Rejection as rejection:
        # Lamassu v2.0 sends every event with id "": the connector gives it one derived from the body.
        try:
            parsed = parse_structured(body.rstrip(b"\r\n"), repair_missing_id=True)
        except Rejection:
            return f"invalid: {rejection.code.value}: {rejection.message}"
        if not parsed.repaired_id:
            return f"invalid: {rejection.code.value}: {rejection.message}"
        note = "; no id: the connector derives one from the body, validation.repair_missing_id"
    event = parsed.event
    specs = specs_for(event.type)
    if not specs:
        return f"ok: {event.type} (not in the catalogue: envelope checked only{note})"
    direction = _direction(event.source, {spec.direction for spec in specs})
    problem = check_data(event.type, event.data, direction, has_data_base64=event.data_base64 is not None)
    if problem is not None:
        return f"invalid: invalid_data: {problem}"
    kinds = sorted(
        {
            f"{spec.generation.value} {_KIND_NAMES.get(spec.kind, spec.direction.value)}"
            for spec in specs
            if direction in (None, spec.direction)
        }
    )
    shapes = matched_shapes(event.type, event.data)
    shape = f"; shape {', '.join(shapes)}" if shapes else ""
    return f"ok: {event.type} ({', '.join(kinds)}{shape}{note})"


_KIND_NAMES = {EventKind.AUDIT: "audit copy", EventKind.ERROR: "error record"}


def _direction(source: str, directions: set[Direction]) -> Direction | None:
    # A type used both ways (v1 *.status.update): replies come from AWS (source aws/..., cloud-trail).
    if len(directions) == 1:
        return None
    return Direction.REPLY if source.startswith(("aws", "cloud")) else Direction.COMMAND
