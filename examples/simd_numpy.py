"""SIMD-aligned NumPy arrays: every array NumPy makes starts on a 64-byte boundary.

AVX-512 loads a cache line at a time and is fastest (and, for its aligned forms,
only correct) when the data starts on one. NumPy promises 16 bytes. Under
kmemcache.numpy's handler (NEP 49), every array NumPy allocates in the block,
ufunc outputs and temporaries included, comes from kmemcache and is aligned.

    python examples/simd_numpy.py
"""

from __future__ import annotations

import numpy as np

import kmemcache.numpy

ALIGN = 64


def workload(n: int) -> list[np.ndarray]:
    """Arrays made the ways a program makes them."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal(n)
    b = np.sin(a) * 2 + 1  # ufunc outputs and a temporary
    c = np.concatenate([a, b])[::3].copy()
    d = np.sort(b)
    e = a.reshape(-1, 10) @ np.ones((10, 4))  # a matmul's result
    return [a, b, c, d, e]


def aligned_share(arrays: list[np.ndarray]) -> str:
    ok = sum(x.ctypes.data % ALIGN == 0 for x in arrays)
    return f"{ok} of {len(arrays)}"


def main() -> None:
    default = workload(1000)
    with kmemcache.numpy.aligned(ALIGN):
        ours = workload(1000)
    print(f"NumPy's default allocator: {aligned_share(default)} arrays {ALIGN}-byte aligned")
    print(f"kmemcache.numpy.aligned({ALIGN}): {aligned_share(ours)} arrays {ALIGN}-byte aligned")
    assert all(x.ctypes.data % ALIGN == 0 for x in ours)
    # the results are the same numbers either way
    assert all(np.array_equal(x, y) for x, y in zip(default, ours, strict=True))


if __name__ == "__main__":
    main()
