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

import struct
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


_EMPTY = pa.scalar(b"", pa.large_binary())


def _binary(lengths: np.ndarray, data) -> pa.LargeBinaryArray:
    """Rows of ``lengths`` bytes each, cut one after another from ``data``."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return _sliced(offsets, data)


def _sliced(offsets: np.ndarray, data) -> pa.LargeBinaryArray:
    """Row i is ``data[offsets[i]:offsets[i + 1]]`` (no copy)."""
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(offsets) - 1,
                                            [None, pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(data)])


def fixed_width(matrix: np.ndarray) -> pa.LargeBinaryArray:
    """One row per row of a (rows, width) uint8 matrix."""
    return _binary(np.full(len(matrix), matrix.shape[1], dtype=np.int64), np.ascontiguousarray(matrix))


def join(*parts) -> pa.LargeBinaryArray:
    """Row-wise concatenation of binary arrays and ``bytes`` constants."""
    columns = [pa.scalar(p, pa.large_binary()) if isinstance(p, bytes) else p for p in parts]
    return pc.binary_join_element_wise(*columns, _EMPTY)


def varints(values: np.ndarray) -> pa.LargeBinaryArray:
    """Each int64 value's signed varint (negatives: ten bytes of two's complement)."""
    flat, ends = _varints(values)
    return _binary(np.diff(ends, prepend=0), flat)


def length_delimited(tag: bytes, bodies: pa.LargeBinaryArray) -> pa.LargeBinaryArray:
    """``tag + varint(len(body)) + body`` per row."""
    return join(tag, varints(pc.binary_length(bodies).to_numpy(zero_copy_only=False)), bodies)


def _where(valid: np.ndarray, rows: pa.LargeBinaryArray) -> pa.LargeBinaryArray:
    """``rows`` where ``valid``, ``b""`` elsewhere."""
    return rows if valid.all() else pc.if_else(pa.array(valid), rows, _EMPTY)


def _scalars(array: pa.Array, value_type: ValueType) -> pa.LargeBinaryArray | None:
    tag = _TAGS[value_type]
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    if value_type in (ValueType.INT64, ValueType.INT32):
        if pa.types.is_floating(array.type):  # an int column with nulls that went through pandas: NaN is null
            floats = pc.fill_null(array, float("nan")).to_numpy(zero_copy_only=False)
            valid &= ~np.isnan(floats)
            values = np.where(valid, floats, 0).astype(np.int64)
        else:
            values = pc.fill_null(array, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        return _where(valid, join(tag, varints(values)))
    if value_type in (ValueType.DOUBLE, ValueType.FLOAT):
        dtype = np.dtype("<f8" if value_type == ValueType.DOUBLE else "<f4")
        floats = pc.fill_null(array, float("nan")).to_numpy(zero_copy_only=False).astype(dtype)
        valid &= ~np.isnan(floats)
        matrix = np.empty((len(floats), 1 + dtype.itemsize), dtype=np.uint8)
        matrix[:, 0] = tag[0]
        matrix[:, 1:] = floats.view(np.uint8).reshape(-1, dtype.itemsize)
        return _where(valid, fixed_width(matrix))
    if value_type == ValueType.BOOL:
        matrix = np.empty((len(array), 2), dtype=np.uint8)
        matrix[:, 0] = tag[0]
        matrix[:, 1] = pc.fill_null(array, False).to_numpy(zero_copy_only=False)
        return _where(valid, fixed_width(matrix))
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
            or pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        return None
    return _where(valid, length_delimited(tag, pc.fill_null(array.cast(pa.large_binary()), _EMPTY)))


def _varints(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The signed varints of int64 ``values``, concatenated, and each one's end offset."""
    unsigned = values.astype(np.int64).view(np.uint64)  # negatives: two's complement, 10 bytes
    sizes = np.ones(len(unsigned), dtype=np.int64)
    for group in range(1, 10):
        sizes += unsigned >= np.uint64(1 << (7 * group))
    ends = np.cumsum(sizes)
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint8)
    position, remaining, more = ends - sizes, unsigned, sizes
    while len(position):  # one pass per byte: every value still longer writes its next seven bits
        out[position] = (remaining & np.uint64(0x7F)).astype(np.uint8) | np.where(more > 1, 0x80, 0).astype(np.uint8)
        longer = more > 1
        position, remaining, more = position[longer] + 1, remaining[longer] >> np.uint64(7), more[longer] - 1
    return out.tobytes(), ends


def _packed_lists(array: pa.Array, value_type: ValueType) -> pa.LargeBinaryArray:
    """Numeric lists, packed for the whole column at once: floats and doubles as their
    little-endian bytes, ints as varints; an empty list is an empty message."""
    values = array.values.to_numpy(zero_copy_only=False)
    if value_type in _FIXED_LISTS:
        dtype = np.dtype(_FIXED_LISTS[value_type])
        flat = values.astype(dtype, copy=False).tobytes()
        byte_at = np.arange(len(values) + 1, dtype=np.int64) * dtype.itemsize  # byte offset of value i
    else:
        flat, ends = _varints(values)
        byte_at = np.concatenate([[0], ends])
    row_bytes = byte_at[array.offsets.to_numpy()]  # each row's values are one slice of ``flat``
    packed = _sliced(row_bytes, flat)
    bodies = _where(np.diff(row_bytes) > 0, length_delimited(b"\x0a", packed))
    return _where(array.is_valid().to_numpy(zero_copy_only=False), length_delimited(_TAGS[value_type], bodies))


def serialized_values(column: pa.ChunkedArray | pa.Array, value_type: ValueType) -> pa.LargeBinaryArray | None:
    """Per row, the serialized ``Value`` of ``column`` as Feast type ``value_type`` (``b""``
    for a null); None when the type (or a null inside a list) needs Feast's own conversion."""
    if value_type not in SUPPORTED_TYPES:
        return None
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_null(array.type):  # no value in the whole column (pandas' all-None object column)
        return pa.array([b""] * len(array), pa.large_binary())
    if value_type in _FIXED_LISTS or value_type in (ValueType.INT32_LIST, ValueType.INT64_LIST):
        if not pa.types.is_list(array.type) and not pa.types.is_large_list(array.type):
            return None
        if array.values.null_count:
            return None
        return _packed_lists(array, value_type)
    return _scalars(array, value_type)


def timestamp_wires(column: pa.ChunkedArray | pa.Array) -> pa.LargeBinaryArray:
    """Per row, the timestamp as one ``event_timestamps`` element of a serving response's
    ``FeatureVector`` (tag, length, ``google.protobuf.Timestamp``), as
    ``Timestamp.FromDatetime`` gives it; naive timestamps mean UTC, nulls are not allowed."""
    micros = column.cast(pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    seconds, nanos = np.divmod(micros, 1_000_000)
    nanos *= 1000
    parts = [_where(seconds != 0, join(b"\x08", varints(seconds))), _where(nanos != 0, join(b"\x10", varints(nanos)))]
    return length_delimited(b"\x1a", join(*parts))


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
