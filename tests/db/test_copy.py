"""Binary COPY in and out of fixed-width numpy columns, against the real server."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy.engine import Connection

from service.db import copy

KINDS = {"a": "int2", "b": "int4", "c": "int8", "d": "float4", "e": "float8"}


def test_columns_come_back_as_they_went_in(conn: Connection) -> None:
    rng = np.random.default_rng(3)
    n = 70_000  # several writes of the stream in, several chunks out
    columns = {
        "a": rng.integers(-(2**15), 2**15, n).astype(np.int16),
        "b": rng.integers(-(2**31), 2**31, n).astype(np.int32),
        "c": rng.integers(-(2**62), 2**62, n),
        "d": rng.standard_normal(n).astype(np.float32),
        "e": rng.standard_normal(n),
    }
    conn.exec_driver_sql("CREATE TEMP TABLE t (i serial, a int2, b int4, c int8, d real, e float8)")
    copy.copy_in(conn, "t", {k: (v, KINDS[k]) for k, v in columns.items()}, rows_per_write=30_000)
    got = copy.copy_out(conn, "SELECT a, b, c, d, e FROM t ORDER BY i", [], KINDS)
    for name, values in columns.items():
        assert got[name].dtype == values.dtype and np.array_equal(got[name], values), name
    some = copy.copy_out(conn, "SELECT b FROM t WHERE i > %s ORDER BY i", [n - 2], {"b": "int4"})
    assert some["b"].tolist() == columns["b"][-2:].tolist()
    none = copy.copy_out(conn, "SELECT b FROM t WHERE i < 0", [], {"b": "int4"})
    assert none["b"].shape == (0,)


def test_a_null_or_a_wider_field_is_refused(conn: Connection) -> None:
    conn.exec_driver_sql("CREATE TEMP TABLE u (a int4, b int8)")
    conn.exec_driver_sql("INSERT INTO u VALUES (1, 2), (NULL, 3)")
    with pytest.raises(ValueError, match="a field is NULL or not of its type"):
        copy.copy_out(conn, "SELECT a FROM u", [], {"a": "int4"})
    with pytest.raises(ValueError, match="a field is NULL or not of its type"):
        copy.copy_out(conn, "SELECT b FROM u", [], {"b": "int4"})
