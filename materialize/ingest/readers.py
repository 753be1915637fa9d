"""Reading input files and frames into chunks of rows, whatever bytes they hold.

A CSV file is read as bytes, one line per row (a quoted field cannot span lines): every
line becomes a row or, when it cannot be split into the header's fields (a quote left
open, a wrong field count, a line over ``MAX_LINE_BYTES``), a malformed-line rejection.
Bytes that are not UTF-8 are kept (as surrogates, see ``validation.printable``) for the
validation to reject in the field where they are. Only what cannot be read as a table
at all (no header line, a wrong column set, not a Parquet file) raises ``UnreadableInput``.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from materialize.ingest.schema import TableSchema
from materialize.ingest.validation import Rejection, UnreadableInput, check_columns

MAX_LINE_BYTES = 1 << 20
"""Longer CSV lines are quarantined unread (the first ``RAW_PREFIX_BYTES`` are kept)."""
RAW_PREFIX_BYTES = 1 << 10
_BLOCK_BYTES = 1 << 22


@dataclass
class RawChunk:
    """Rows of one input chunk before validation."""

    frame: pd.DataFrame                 # schema columns, strings (files) or typed (generators)
    lines: np.ndarray                   # (n,) int64 line (CSV) or row (Parquet, frames) of each row
    malformed: list[Rejection] = field(default_factory=list)  # lines that could not be parsed
    texts: list[str] | None = None      # CSV: each row's line as read (without its line break)
    unit: str = "line"                  # what ``lines`` count: "line" or "row"

    def raw(self, positions: np.ndarray) -> list[dict[str, Any]]:
        """The rows at ``positions`` as they were in the input: a CSV line's text, else the
        values as strings (missing ones None)."""
        if self.texts is not None:
            return [{"text": self.texts[p]} for p in positions]
        rows = self.frame.iloc[positions].astype("string").to_dict("records")
        return [{k: (None if v is pd.NA else str(v)) for k, v in row.items()} for row in rows]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _decode(data: bytes) -> str:
    """UTF-8 text; other bytes kept as surrogates (``surrogateescape``)."""
    return data.decode("utf-8", "surrogateescape")


def _physical_lines(handle: BinaryIO) -> Iterator[list[bytes | tuple[bytes, int]]]:
    """Blocks of lines without their line break; an over-long line comes as (first bytes, length)."""
    rest = b""
    overlong: tuple[bytes, int] | None = None  # inside a line longer than MAX_LINE_BYTES
    while block := handle.read(_BLOCK_BYTES):
        if overlong is not None:
            cut = block.find(b"\n")
            if cut < 0:
                overlong = (overlong[0], overlong[1] + len(block))
                continue
            yield [(overlong[0], overlong[1] + cut)]
            overlong, block = None, block[cut + 1:]
        data = rest + block
        cut = data.rfind(b"\n")
        lines: list[bytes | tuple[bytes, int]] = data[:cut].split(b"\n") if cut >= 0 else []
        rest = data[cut + 1:]
        if len(rest) > MAX_LINE_BYTES:
            overlong, rest = (rest[:RAW_PREFIX_BYTES], len(rest)), b""
        yield [(line[:RAW_PREFIX_BYTES], len(line)) if len(line) > MAX_LINE_BYTES else line for line in lines]
    if overlong is not None:
        yield [overlong]
    elif rest:
        yield [rest]


_CSV_ERRORS = {  # the csv module's words for what went wrong, in a user's words
    "unexpected end of data": "unclosed quote",
    "new-line character seen in unquoted field": "carriage return inside a field",
    "expected after": "text after a closing quote",
}


def _csv_error(error: csv.Error) -> str:
    return next((words for key, words in _CSV_ERRORS.items() if key in str(error)), str(error))


def _split_fields(texts: list[str]) -> list[list[str] | str]:
    """Each line's fields, or why it cannot be split. Lines are parsed one by one: a quote
    left open at the end of a line makes that line malformed, not the lines after it."""
    out: list[list[str] | str] = []
    reader = csv.reader(iter(texts), strict=True)
    while len(out) < len(texts):
        first = reader.line_num
        try:
            record: list[str] | str = next(reader)
        except csv.Error as error:
            record = _csv_error(error)
        last = reader.line_num
        if last - first == 1:
            out.append(record)
            continue
        out.append("unclosed quote")  # the record ran on into the next lines: parse those alone
        for text in texts[first + 1:last]:
            try:
                out.append(next(csv.reader([text], strict=True)))
            except csv.Error as error:
                out.append(_csv_error(error))
    return out


def _read_header(handle: BinaryIO, path: Path) -> list[str]:
    first = handle.readline(MAX_LINE_BYTES + 1)
    if not first.strip():
        raise UnreadableInput(f"{path}: empty file, expected a header line")
    if not first.endswith(b"\n") and len(first) > MAX_LINE_BYTES:
        raise UnreadableInput(f"{path}: no header line in the first {MAX_LINE_BYTES:,} bytes (not a CSV file?)")
    if b"\r" in first.rstrip(b"\r\n"):
        raise UnreadableInput(f"{path}: lines end with a carriage return only (convert to LF or CRLF line ends)")
    # "CSV UTF-8" from spreadsheets starts with a byte-order mark; headers often have ", ".
    text = _decode(first.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n"))
    try:
        return [name.strip(" \t") for name in next(csv.reader([text], strict=True))]
    except csv.Error as error:
        raise UnreadableInput(f"{path}: the header line cannot be read as CSV ({error})") from None


def _csv_chunks(path: Path, schema: TableSchema, chunk_rows: int) -> Iterator[RawChunk]:
    csv.field_size_limit(MAX_LINE_BYTES)
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise UnreadableInput(f"{path}: cannot be opened ({error.strerror})") from None
    with handle:
        header = _read_header(handle, path)
        check_columns(header, schema, str(path))
        line_number = 1
        rows: list[list[str]] = []
        lines: list[int] = []
        texts: list[str] = []
        malformed: list[Rejection] = []
        for block in _physical_lines(handle):
            decoded: list[str] = []
            numbers: list[int] = []
            for line in block:
                line_number += 1
                if isinstance(line, tuple):
                    prefix, length = line
                    malformed.append(Rejection(line_number, None, f"malformed line: {length:,} bytes long (at most {MAX_LINE_BYTES:,})",
                                               {"text": _decode(prefix), "truncated": True}))
                elif line.strip(b"\r"):  # blank lines are not rows
                    decoded.append(_decode(line.removesuffix(b"\r")))
                    numbers.append(line_number)
            for number, text, record in zip(numbers, decoded, _split_fields(decoded)):
                if isinstance(record, str):
                    reason = f"malformed line: {record}"
                elif len(record) != len(header):
                    reason = f"malformed line: expected {len(header)} fields, found {len(record)}"
                else:
                    rows.append(record)
                    lines.append(number)
                    texts.append(text)
                    continue
                malformed.append(Rejection(number, None, reason, {"text": text}))
            while len(rows) >= chunk_rows:
                yield _csv_chunk(header, rows[:chunk_rows], lines[:chunk_rows], texts[:chunk_rows], malformed)
                rows, lines, texts, malformed = rows[chunk_rows:], lines[chunk_rows:], texts[chunk_rows:], []
        yield _csv_chunk(header, rows, lines, texts, malformed)


def _csv_chunk(header: list[str], rows: list[list[str]], lines: list[int], texts: list[str],
               malformed: list[Rejection]) -> RawChunk:
    frame = pd.DataFrame(rows, columns=header, dtype=object) if rows else pd.DataFrame(columns=header, dtype=object)
    return RawChunk(frame, np.array(lines, dtype=np.int64), malformed, texts)


def _parquet_chunks(path: Path, schema: TableSchema, chunk_rows: int) -> Iterator[RawChunk]:
    first_row = 1
    try:
        parquet = pq.ParquetFile(path)
        check_columns(parquet.schema_arrow.names, schema, str(path))
        binary = [f.name for f in parquet.schema_arrow if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            frame = batch.to_pandas()
            for name in binary:  # as text, with bytes that are not UTF-8 kept for the validation
                frame[name] = frame[name].map(_decode, na_action="ignore")
            yield RawChunk(frame, np.arange(first_row, first_row + len(frame), dtype=np.int64), unit="row")
            first_row += len(frame)
    except (OSError, ValueError) as error:
        if isinstance(error, UnreadableInput):
            raise
        where = f" after row {first_row - 1:,}" if first_row > 1 else ""
        raise UnreadableInput(f"{path}: cannot be read as Parquet{where} ({str(error).strip().splitlines()[0]})") from None


def read_file(path: Path, schema: TableSchema, chunk_rows: int) -> Iterator[RawChunk]:
    """Chunks of a CSV (comma separated, header line) or Parquet file.

    Raises (while iterating):
        UnreadableInput: not readable as a table (names the file and the cause); a
            ``SchemaError`` when the column set is wrong.
    """
    suffix = path.suffix.lower()
    if suffix in {".csv", ".txt"}:
        return _csv_chunks(path, schema, chunk_rows)
    if suffix in {".parquet", ".pq"}:
        return _parquet_chunks(path, schema, chunk_rows)
    raise UnreadableInput(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")


def frames_as_chunks(frames: Iterable[pd.DataFrame], schema: TableSchema, source: str) -> Iterator[RawChunk]:
    """Adapt in-memory frames (a generator's output) to chunks; rows count from 1."""
    first_row = 1
    for frame in frames:
        check_columns(list(frame.columns), schema, source)
        yield RawChunk(frame.reset_index(drop=True), np.arange(first_row, first_row + len(frame), dtype=np.int64),
                       unit="row")
        first_row += len(frame)
