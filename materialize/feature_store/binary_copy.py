"""PostgreSQL's binary COPY input, built a column at a time with Arrow.

``write_copy(copy, fields)`` sends the whole input of ``COPY ... FROM STDIN (FORMAT
BINARY)``: the signature, one tuple per row, the trailer. ``fields`` holds one binary
column per table column, each value already in its column type's binary input form (a
null is SQL NULL); rows are framed and joined by Arrow kernels, with no Python object per
row. The ``*_values`` functions give those forms for the types the online store stages.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from materialize.feature_store.arrow_values import fixed_width, join

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
TRAILER = b"\xff\xff"
CHUNK_BYTES = 8 << 20  # bytes per write to the server
_POSTGRES_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
_INT4_OID = 23


def int8_values(values: np.ndarray) -> pa.LargeBinaryArray:
    """``bigint`` binary input: eight bytes, big-endian."""
    return fixed_width(np.asarray(values, dtype=">i8").view(np.uint8).reshape(-1, 8))


def timestamptz_values(column: pa.ChunkedArray | pa.Array) -> pa.LargeBinaryArray:
    """``timestamptz`` binary input (microseconds since 2000-01-01 UTC, big-endian); naive
    timestamps mean UTC, nulls stay null."""
    micros = pc.fill_null(column.cast(pa.timestamp("us")).cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    values = int8_values(micros - _POSTGRES_EPOCH_US)
    if not column.null_count:
        return values
    return pc.if_else(pc.is_valid(column), values, pa.scalar(None, pa.large_binary()))


def int4_array_values(matrix: np.ndarray) -> pa.LargeBinaryArray:
    """``int4[]`` binary input, one one-dimensional array per row of a (rows, n) matrix."""
    rows, n = matrix.shape
    head = np.frombuffer(struct.pack(">iiIii", 1, 0, _INT4_OID, n, 1), dtype=np.uint8)
    elements = np.empty((rows, n, 2), dtype=">i4")
    elements[:, :, 0] = 4  # each element's length
    elements[:, :, 1] = matrix
    out = np.empty((rows, len(head) + 8 * n), dtype=np.uint8)
    out[:, : len(head)] = head
    out[:, len(head):] = elements.view(np.uint8).reshape(rows, -1)
    return fixed_width(out)


def _framed(field: pa.LargeBinaryArray) -> list:
    """A field as COPY sends it: its length (-1 for NULL) and its bytes."""
    lengths = pc.fill_null(pc.binary_length(field), -1).to_numpy(zero_copy_only=False)
    prefix = fixed_width(lengths.astype(">i4").view(np.uint8).reshape(-1, 4))
    return [prefix, pc.fill_null(field, pa.scalar(b"", pa.large_binary())) if field.null_count else field]


def write_copy(copy, fields: Sequence[pa.LargeBinaryArray]) -> None:
    """Send ``fields`` (one per table column, equal lengths) through a psycopg ``Copy``
    of ``COPY ... FROM STDIN (FORMAT BINARY)``."""
    parts = [struct.pack(">h", len(fields))]
    for field in fields:
        parts += _framed(field)
    rows = join(*parts)
    _, offsets, data = rows.buffers()
    first, last = np.frombuffer(offsets, dtype=np.int64)[[rows.offset, rows.offset + len(rows)]]
    body = memoryview(data)[first:last] if len(rows) else memoryview(b"")
    copy.write(SIGNATURE)
    for start in range(0, len(body), CHUNK_BYTES):
        copy.write(body[start:start + CHUNK_BYTES])
    copy.write(TRAILER)
