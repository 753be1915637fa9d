"""Arrow columns to Feast's wire forms, without a protobuf object per value.

Feast's writers turn every cell of a materialized batch into a ``ValueProto`` (with a
pandas null check per cell) and the online store then serializes them again. The online
store plugin needs only the bytes, so these functions produce them straight from Arrow:

- ``serialized_values(column, value_type)``: per row, the serialized ``feast.types.Value``
  (``b""`` for a null), byte for byte what ``ValueProto.SerializeToString()`` gives for
  the value Feast's ``python_values_to_proto_values`` would build;
- ``serialized_entity_keys(columns, value_types, version)``: per row, what
  ``feast.infra.key_encoding_utils.serialize_entity_key`` gives.

Types outside ``SUPPORTED_TYPES`` return None, and the caller takes Feast's own path.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from feast.value_type import ValueType

_TAGS = {  # the field tag of each ``Value`` oneof member (field number << 3 | wire type)
    ValueType.BYTES: b"\x0a", ValueType.STRING: b"\x12", ValueType.INT32: b"\x18", ValueType.INT64: b"\x20",
    ValueType.DOUBLE: b"\x29", ValueType.FLOAT: b"\x35", ValueType.BOOL: b"\x38",
    ValueType.INT32_LIST: b"\x6a", ValueType.INT64_LIST: b"\x72", ValueType.DOUBLE_LIST: b"\x7a",
    ValueType.FLOAT_LIST: b"\x82\x01",
}
SUPPORTED_TYPES = frozenset(_TAGS)
_FIXED_LISTS = {ValueType.FLOAT_LIST: "<f4", ValueType.DOUBLE_LIST: "<f8"}
_KEY_FORMATS = {ValueType.INT64: "<q", ValueType.INT32: "<i"}


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _signed_varint(n: int) -> bytes:
    """int32/int64 fields: negative numbers as 10-byte two's complement varints."""
    return varint(n if n >= 0 else n + (1 << 64))


def _length_delimited(tag: bytes, body: bytes) -> bytes:
    return tag + varint(len(body)) + body


def _scalars(values: list, value_type: ValueType) -> list[bytes]:
    tag = _TAGS[value_type]
    if value_type in (ValueType.INT64, ValueType.INT32):
        return [b"" if v is None else tag + _signed_varint(v) for v in values]
    if value_type == ValueType.DOUBLE:
        return [b"" if v is None or math.isnan(v) else tag + struct.pack("<d", v) for v in values]
    if value_type == ValueType.FLOAT:
        return [b"" if v is None or math.isnan(v) else tag + struct.pack("<f", v) for v in values]
    if value_type == ValueType.BOOL:
        return [b"" if v is None else tag + (b"\x01" if v else b"\x00") for v in values]
    if value_type == ValueType.STRING:
        return [b"" if v is None else _length_delimited(tag, v.encode()) for v in values]
    return [b"" if v is None else _length_delimited(tag, bytes(v)) for v in values]  # BYTES


def _varints(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The signed varints of int64 ``values``, concatenated, and each one's end offset."""
    unsigned = values.astype(np.int64).view(np.uint64)  # negatives: two's complement, 10 bytes
    groups = np.stack([(unsigned >> np.uint64(7 * i)) & np.uint64(0x7F) for i in range(10)], axis=1).astype(np.uint8)
    bits = np.zeros(len(unsigned), dtype=np.int64)
    remaining = unsigned.copy()
    while remaining.any():
        bits += remaining > 0
        remaining >>= np.uint64(7)
    sizes = np.maximum(bits, 1)
    keep = np.arange(10) < sizes[:, None]
    groups[np.arange(10) < (sizes - 1)[:, None]] |= 0x80  # continuation bit on all but the last byte
    return groups[keep].tobytes(), np.cumsum(sizes)


def _packed_lists(column: pa.ChunkedArray, value_type: ValueType) -> list[bytes]:
    """Numeric lists, packed for the whole column at once: floats and doubles as their
    little-endian bytes, ints as varints; then one slice per row."""
    tag = _TAGS[value_type]
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    values = array.values.to_numpy(zero_copy_only=False)
    if value_type in _FIXED_LISTS:
        dtype = np.dtype(_FIXED_LISTS[value_type])
        flat = values.astype(dtype, copy=False).tobytes()
        byte_at = np.arange(len(values) + 1) * dtype.itemsize  # byte offset of value i
    else:
        flat, ends = _varints(values)
        byte_at = np.concatenate([[0], ends])
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    out = []
    for row in range(len(array)):
        if not valid[row]:
            out.append(b"")
            continue
        start, stop = offsets[row], offsets[row + 1]
        body = _length_delimited(b"\x0a", flat[byte_at[start]:byte_at[stop]]) if stop > start else b""
        out.append(_length_delimited(tag, body))
    return out


def serialized_values(column: pa.ChunkedArray | pa.Array, value_type: ValueType) -> list[bytes] | None:
    """Per row, the serialized ``Value`` of ``column`` as Feast type ``value_type``; None
    when the type (or a null inside a list) needs Feast's own conversion."""
    if value_type not in SUPPORTED_TYPES:
        return None
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    if value_type in _FIXED_LISTS or value_type in (ValueType.INT32_LIST, ValueType.INT64_LIST):
        if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
            return None
        if any(chunk.values.null_count for chunk in column.chunks):
            return None
        return _packed_lists(column, value_type)
    values = column.to_pylist()
    if value_type in (ValueType.INT64, ValueType.INT32) and pa.types.is_floating(column.type):
        # an int column with nulls that went through pandas (Feast's filter step): NaN is null
        values = [None if v is None or math.isnan(v) else int(v) for v in values]
    elif value_type in (ValueType.STRING, ValueType.BYTES) and not (
        pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        or pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)
    ):
        return None
    return _scalars(values, value_type)


def serialized_entity_keys(columns: Mapping[str, Sequence], value_types: Mapping[str, ValueType], version: int) -> list[bytes] | None:
    """Per row, Feast's serialized entity key of the join key ``columns`` (python values);
    None for key types or serialization versions served only by Feast's function."""
    if version < 3 or not columns or any(value_types[k] not in (*_KEY_FORMATS, ValueType.STRING) for k in columns):
        return None
    if any(v is None for values in columns.values() for v in values):
        return None
    names = sorted(columns)
    prefix = struct.pack("<I", len(names)) + b"".join(
        struct.pack("<II", ValueType.STRING.value, len(n.encode())) + n.encode() for n in names
    )
    parts = []
    for name in names:
        value_type = value_types[name]
        if value_type == ValueType.STRING:
            encoded = [v.encode() for v in columns[name]]
            parts.append([struct.pack("<II", value_type.value, len(e)) + e for e in encoded])
        else:
            fmt = _KEY_FORMATS[value_type]
            head = struct.pack("<II", value_type.value, struct.calcsize(fmt))
            parts.append([head + struct.pack(fmt, v) for v in columns[name]])
    return [prefix + b"".join(row) for row in zip(*parts)]
