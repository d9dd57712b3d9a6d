"""Do our OpenMP kernels and the BLAS behind GEMM slow each other down?

Times, in one run on 2 threads: a GEMM alone (scipy's BLAS through fastbp.matmul), a large elementwise
kernel alone (ReLU over 2^20 floats, which runs on OpenMP threads), and the two alternating; then the same
alternation with NumPy's GEMM (a second OpenBLAS pool) in place of ours. If the pools do not interfere,
the alternating time is close to the sum of the parts (ratio ~1.0).

    python bench/bench_threads.py"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import numpy as np  # noqa: E402

from fastbp import _backend  # noqa: E402

C = _backend.compiled


def main():
    _common.setup_threads()
    rng = np.random.default_rng(0)
    rows = []
    big = rng.standard_normal(1 << 20).astype(np.float32)
    for n in (64, 256, 512):
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        gemm = _common.time_fn(lambda: C.matmul(a, b), repeat=100)
        np_gemm = _common.time_fn(lambda: np.matmul(a, b), repeat=100)
        relu = _common.time_fn(lambda: C.relu_forward(big), repeat=100)
        ours = _common.time_fn(lambda: (C.matmul(a, b), C.relu_forward(big)), repeat=100)
        mixed = _common.time_fn(lambda: (C.matmul(a, b), np.matmul(a, b)), repeat=100)
        rows.append({
            "gemm_n": n, "gemm_ms": gemm, "relu_1M_ms": relu, "gemm+relu_ms": ours,
            "interference": ours / (gemm + relu),
            "numpy_gemm_ms": np_gemm, "ours+numpy_gemm_ms": mixed, "mixed_pool_interference": mixed / (gemm + np_gemm),
        })
    _common.report("threads", rows, ["gemm_n", "gemm_ms", "relu_1M_ms", "gemm+relu_ms", "interference",
                                     "numpy_gemm_ms", "ours+numpy_gemm_ms", "mixed_pool_interference"])


if __name__ == "__main__":
    main()
