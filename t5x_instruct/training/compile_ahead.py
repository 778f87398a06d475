"""Compile the train step ahead of time while the first batch loads, as T5X does.

The step's input shapes are known before any data is read (the data iterator's element spec),
so lowering and compiling need not wait for the first batch, and the first batch (pipeline
construction, the first shuffle buffer fill, packing) need not wait for the compiler: one runs
in a thread while the other runs here. XLA's compiler and tf.data both release the GIL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from t5x_instruct.runtime import lockstep

T = TypeVar("T")


def compile_while_fetching(
    lower: Callable[[], Any], fetch: Callable[[], T], name: str
) -> tuple[Any, T, float]:
    """``(compiled, fetched, compile_seconds)``: ``lower().compile()`` here while ``fetch()``
    runs in a thread. Every process compiles before any runs the program (a barrier in a
    multi-host job, so that the first collective does not time out on a slow compiler)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="first-batch") as pool:
        pending = pool.submit(fetch)
        start = time.perf_counter()
        compiled = lower().compile()
        seconds = time.perf_counter() - start
        lockstep.barrier(f"compiled:{name}")
        return compiled, pending.result(), seconds
