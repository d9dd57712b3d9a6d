"""How far from the machine's limits: GEMM GFLOP/s against the FMA peak, and a STREAM-like copy bandwidth.

    python bench/bench_limits.py            # fastbp's matmul and NumPy's, each in a process of its own
    python bench/bench_limits.py --rounds 7

GEMM: float32 n x n (default 1024) products, 2 n^3 flops each, median per process; fastbp (fastbp._C matmul; "fastbp-blas-threads": the same with one BLAS call on OpenBLAS's own threads, as before,
which bench/workloads.py's gemm_1024 times through the Tensor `@`) and NumPy alternate in separate processes.
The peak is cores x clock x flops per cycle, with 64 float32 flops per cycle and core for two 512-bit FMA
pipes (AVX-512) and 32 for 256-bit FMA code (AVX2, e.g. OpenBLAS's Haswell kernels); the script prints the
CPU's instruction-set flags and which OpenBLAS kernel set (threadpoolctl "architecture") each library uses.
The clock is taken from --ghz (default: /proc/cpuinfo's "cpu MHz"; boost clocks are higher, say so).

Copy bandwidth: NumPy's copyto of float32 arrays, one thread, and two threads each copying half (NumPy
releases the GIL in copyto), counted as bytes read + bytes written; once for arrays that fit the L2/L3 caches
(8 MiB) and once for 256 MiB (memory). Sets no environment variable."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _gemm_worker(lib, n, repeat, single=False):
    """Median wall ms per product; with `single`, one thread and the median CPU time of this thread
    (time.thread_time), which a loaded machine does not inflate: kernel efficiency per core."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    clock = time.thread_time if single else time.perf_counter
    if single:
        import threadpoolctl
        threadpoolctl.threadpool_limits(1)
    if lib.startswith("fastbp"):
        sys.path.insert(1, ROOT)
        import fastbp
        gemm = dict(zip(fastbp._backend.FAMILIES, fastbp._backend.compiled_modules))["gemm"]
        if lib == "fastbp-blas-threads":  # one sgemm call on OpenBLAS's own threads (hooks are process-wide)
            dict(zip(fastbp._backend.FAMILIES, fastbp._backend.compiled_modules))["conv"]._set_blas_thread_hooks(0, 0)
        if single:
            fastbp.set_num_threads(1)
        mm = gemm.matmul
    elif lib == "torch":
        import torch
        if single:
            torch.set_num_threads(1)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        mm = lambda x, y: torch.matmul(ta, tb)  # noqa: E731
    elif lib == "jax":
        if single:  # XLA computes on its own thread: count the process's CPU time (one intra-op thread)
            clock = time.process_time
        import jax
        import jax.numpy as jnp
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        f = jax.jit(jnp.matmul)
        mm = lambda x, y: f(ja, jb).block_until_ready()  # noqa: E731
    else:
        mm = np.matmul
    for _ in range(3):
        mm(a, b)
    times = []
    for _ in range(repeat):
        t0 = clock()
        mm(a, b)
        times.append(clock() - t0)
    import threadpoolctl
    arch = {os.path.basename(p["filepath"]): p.get("architecture") for p in threadpoolctl.threadpool_info()
            if p["user_api"] == "blas"}
    print(json.dumps({"lib": lib, "ms": statistics.median(times) * 1e3, "arch": arch}))


def copy_bandwidth(nbytes, threads, repeat=20):
    n = nbytes // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(n), threads)
    bounds = [(p[0], p[-1] + 1) for p in parts]

    def one(lo, hi):
        np.copyto(dst[lo:hi], src[lo:hi])

    best = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        if threads == 1:
            np.copyto(dst, src)
        else:
            ts = [threading.Thread(target=one, args=b) for b in bounds]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        best.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(best) / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--ghz", type=float, default=None)
    ap.add_argument("--single", action="store_true",
                    help="one thread per library, timed by the thread's CPU time (kernel efficiency per core, "
                         "robust on a loaded machine; JAX is run with XLA's Eigen pool off)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _gemm_worker(args.worker, args.n, args.repeat, args.single)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    avx512 = " avx512f" in flags
    mhz = [float(l.split(":")[1]) for l in flags.splitlines() if l.startswith("cpu MHz")]
    ghz = args.ghz or (mhz[0] / 1e3 if mhz else 0.0)
    cores = os.cpu_count()
    import importlib.util
    libs = ["fastbp", "numpy"] if args.single else ["fastbp", "fastbp-blas-threads", "numpy"]
    libs += [m for m in ("torch", "jax") if importlib.util.find_spec(m)]
    if args.single:
        cores = 1
    res = {lib: [] for lib in libs}
    arch = {}
    for r in range(args.rounds):
        for lib in libs[r % len(libs):] + libs[:r % len(libs)]:
            env = None
            if args.single and lib == "jax":  # the benchmark process's own settings, not the user's
                env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false "
                                                 "intra_op_parallelism_threads=1")
            out = subprocess.run([sys.executable, __file__, "--worker", lib, "--n", str(args.n),
                                  "--repeat", str(args.repeat)] + (["--single"] if args.single else []),
                                 capture_output=True, text=True, check=True, env=env)
            rec = json.loads(out.stdout.splitlines()[-1])
            res[lib].append(rec["ms"])
            arch[lib] = rec["arch"]
    flop = 2 * args.n ** 3
    peak512, peak256 = cores * ghz * 64, cores * ghz * 32
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(not set)')}"
          + ("; one thread per library, CPU time of the computing thread" if args.single else ""))
    print(f"CPU: {cores} cores, AVX-512F {'yes' if avx512 else 'no'}, clock {ghz:.2f} GHz assumed; float32 FMA "
          f"peak {peak512:.0f} GFLOP/s with AVX-512 (64 flop/cycle/core), {peak256:.0f} with AVX2 code")
    print(f"GEMM {args.n} float32, median over {args.rounds} processes (min-max), each library alone:")
    for lib in libs:
        med = statistics.median(res[lib])
        gf = flop / med / 1e6
        print(f"  {lib:19s} {med:7.2f} ms ({min(res[lib]):.2f}-{max(res[lib]):.2f})  {gf:6.1f} GFLOP/s = "
              f"{gf / peak512:.0%} of the AVX-512 peak, {gf / peak256:.0%} of the AVX2 peak   BLAS kernels: {arch[lib]}")
    f, n_ = statistics.median(res["fastbp"]), statistics.median(res["numpy"])
    print(f"  fastbp / NumPy time: {f / n_:.2f} (per round: "
          f"{', '.join(f'{a / b:.2f}' for a, b in zip(res['fastbp'], res['numpy']))})")
    if args.single:
        return
    for size, label in ((8 << 20, "8 MiB (caches)"), (256 << 20, "256 MiB (memory)")):
        bw = [copy_bandwidth(size, t) for t in (1, 2)]
        print(f"copy bandwidth {label}: 1 thread {bw[0]:.1f} GB/s, 2 threads {bw[1]:.1f} GB/s (read + write)")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
