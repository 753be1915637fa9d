"""``arrow_values`` produces byte for byte what Feast's own conversion and key
serialization produce, on random columns with nulls, NaN, negatives, empty lists and
non-ASCII text (no database)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from materialize.feature_store.arrow_values import serialized_entity_keys, serialized_values, timestamp_wires

N = 400


def _maybe_null(rng, values, share=0.1):
    return [None if rng.random() < share else v for v in values]


def _columns(rng) -> dict[ValueType, pa.Array]:
    ints = rng.integers(-(2**53), 2**53, N).tolist() + [0, -1, 2**53, -(2**53)]  # exact in Feast's float detour
    small = rng.integers(-(2**31), 2**31, N).tolist() + [0, -1, 2**31 - 1, -(2**31)]
    doubles = (rng.normal(size=N) * 1e6).tolist() + [0.0, -0.0, float("nan"), float("inf")]
    floats = rng.normal(size=N).astype(np.float32).tolist() + [0.0, -0.0, float("nan"), 1e-40]
    words = [str(rng.choice(["", "a", "é ✓", "x" * 300])) for _ in range(N + 4)]
    rows = N + 4

    def lists(make):
        return _maybe_null(rng, [make(int(rng.integers(0, 6))) for _ in range(rows)])

    return {
        ValueType.INT64: pa.array(_maybe_null(rng, ints), pa.int64()),
        ValueType.INT32: pa.array(_maybe_null(rng, small), pa.int32()),
        ValueType.DOUBLE: pa.array(_maybe_null(rng, doubles), pa.float64()),
        ValueType.FLOAT: pa.array(_maybe_null(rng, floats), pa.float32()),
        ValueType.BOOL: pa.array(_maybe_null(rng, rng.random(rows) < 0.5), pa.bool_()),
        ValueType.STRING: pa.array(_maybe_null(rng, words), pa.string()),
        ValueType.BYTES: pa.array(_maybe_null(rng, [w.encode() for w in words]), pa.binary()),
        ValueType.INT64_LIST: pa.array(lists(lambda n: rng.integers(-(2**40), 2**40, n).tolist()), pa.list_(pa.int64())),
        ValueType.INT32_LIST: pa.array(lists(lambda n: rng.integers(-1000, 1000, n).tolist()), pa.list_(pa.int32())),
        ValueType.FLOAT_LIST: pa.array(lists(lambda n: rng.normal(size=n).astype(np.float32).tolist()),
                                       pa.list_(pa.float32())),
        ValueType.DOUBLE_LIST: pa.array(lists(lambda n: rng.normal(size=n).tolist()), pa.list_(pa.float64())),
    }


TYPES = ["INT64", "INT32", "DOUBLE", "FLOAT", "BOOL", "STRING", "BYTES", "INT64_LIST", "INT32_LIST", "FLOAT_LIST",
         "DOUBLE_LIST"]


@pytest.mark.parametrize("type_name", TYPES)
def test_values_equal_feasts_conversion(type_name):
    value_type = ValueType[type_name]
    column = _columns(np.random.default_rng(11))[value_type]
    chunked = pa.chunked_array([column.slice(0, 150), column.slice(150)])  # several chunks, as a filter leaves them
    expected = [v.SerializeToString() for v in
                python_values_to_proto_values(chunked.to_numpy(zero_copy_only=False), value_type)]
    assert serialized_values(chunked, value_type).to_pylist() == expected


def test_int64_with_nulls_stays_exact():
    """Feast converts an int64 column with nulls through float64 (2**62 + 1 comes back as
    2**62); the store keeps the exact value."""
    values = [2**62 + 1, None, -(2**63), 2**63 - 1]
    expected = [b"" if v is None else Value(int64_val=v).SerializeToString() for v in values]
    assert serialized_values(pa.array(values, pa.int64()), ValueType.INT64).to_pylist() == expected


def test_int_columns_that_went_through_pandas_keep_their_values():
    """Feast's filter step turns an int column with nulls into doubles with NaN."""
    values = [3.0, float("nan"), None, -7.0]
    expected = [Value(int64_val=3).SerializeToString(), b"", b"", Value(int64_val=-7).SerializeToString()]
    assert serialized_values(pa.array(values, pa.float64()), ValueType.INT64).to_pylist() == expected


def test_unsupported_types_and_nulls_inside_lists_are_left_to_feast():
    assert serialized_values(pa.array([1, 2]), ValueType.UNIX_TIMESTAMP) is None
    assert serialized_values(pa.array([[1.0, None]], pa.list_(pa.float32())), ValueType.FLOAT_LIST) is None
    assert serialized_values(pa.array(["a"]), ValueType.STRING_LIST) is None


def test_entity_keys_equal_feasts_serialization():
    rng = np.random.default_rng(5)
    users = rng.integers(-(2**40), 2**40, 300).tolist()
    items = rng.integers(0, 2**31, 300).tolist()
    names = [str(rng.choice(["a", "é", "long" * 20])) for _ in range(300)]
    cases = [
        ({"user_id": users}, {"user_id": ValueType.INT64}),
        ({"item_id": items}, {"item_id": ValueType.INT32}),
        ({"user_id": users, "name": names}, {"user_id": ValueType.INT64, "name": ValueType.STRING}),
        ({"zeta": items, "alpha": users}, {"zeta": ValueType.INT32, "alpha": ValueType.INT64}),  # sorted by name
    ]
    kinds = {ValueType.INT64: "int64_val", ValueType.INT32: "int32_val", ValueType.STRING: "string_val"}
    for columns, types in cases:
        expected = [
            serialize_entity_key(EntityKey(join_keys=list(columns),
                                           entity_values=[Value(**{kinds[types[k]]: columns[k][row]}) for k in columns]),
                                 entity_key_serialization_version=3)
            for row in range(300)
        ]
        assert serialized_entity_keys(columns, types, 3) == expected
    assert serialized_entity_keys({"user_id": [1, None]}, {"user_id": ValueType.INT64}, 3) is None
    assert serialized_entity_keys({"user_id": [1]}, {"user_id": ValueType.INT64}, 2) is None


def test_timestamp_wires_equal_protobufs_timestamp():
    rng = np.random.default_rng(9)
    micros = rng.integers(-(2**41), 2**41, 300).tolist() + [0, 1, -1, 1_000_000, -1_000_000, 999_999]
    stamps = [dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=m) for m in micros]
    expected = []
    for stamp in stamps:
        body = Timestamp()
        body.FromDatetime(stamp)
        wire = body.SerializeToString()
        expected.append(b"\x1a" + bytes([len(wire)]) + wire)
    aware = pa.chunked_array([pa.array(stamps[:100], pa.timestamp("us", tz="UTC")),
                              pa.array(stamps[100:], pa.timestamp("us", tz="UTC"))])
    assert timestamp_wires(aware).to_pylist() == expected
    naive = pa.array([s.replace(tzinfo=None) for s in stamps], pa.timestamp("ns"))  # naive means UTC
    assert timestamp_wires(naive).to_pylist() == expected
