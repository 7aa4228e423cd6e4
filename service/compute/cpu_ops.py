"""Two machine operations numba does not expose, for the CPU kernel: a prefetch and an atomic
fetch-and-add. Each is a plain Python function (what the kernel's uncompiled reference calls)
with a compiled overload (one LLVM instruction)."""

from __future__ import annotations

from typing import Any

import numba
import numba.extending
import numpy as np
from llvmlite import ir
from numba.core import cgutils


def prefetch(array: np.ndarray, index: int | np.integer[Any]) -> None:
    """Ask the core to bring array[index]'s cache line in (a hint: no effect on results)."""


def fetch_add(array: np.ndarray, index: int, value: int) -> int:
    """array[index] += value, atomically where compiled; returns the value before."""
    old = int(array[index])
    array[index] = old + value
    return old


@numba.extending.intrinsic
def _prefetch(typingctx: Any, array: Any, index: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        address = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32]),
            "llvm.prefetch.p0",
        )
        # read (0), keep in every cache level (3), data (1)
        builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return numba.types.void(array, index), codegen


@numba.extending.intrinsic
def _fetch_add(typingctx: Any, array: Any, index: Any, value: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        address = builder.gep(ary.data, [args[1]])
        add = context.cast(builder, args[2], signature.args[2], signature.args[0].dtype)
        return builder.atomic_rmw("add", address, add, "monotonic")

    return array.dtype(array, index, value), codegen


# numba checks that an overload and its implementation name (and annotate) arguments alike.
@numba.extending.overload(prefetch)
def _prefetch_compiled(array: Any, index: Any) -> Any:
    def impl(array: Any, index: Any) -> Any:
        _prefetch(array, index)  # type: ignore[call-arg]  # typingctx is numba's

    return impl


@numba.extending.overload(fetch_add)
def _fetch_add_compiled(array: Any, index: Any, value: Any) -> Any:
    def impl(array: Any, index: Any, value: Any) -> Any:
        return _fetch_add(array, index, value)  # type: ignore[call-arg]

    return impl
