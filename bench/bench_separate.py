"""Each framework ALONE in its own process, default environment: the headline benchmark.

    python bench/bench_separate.py                       # fastbp eager, PyTorch, JAX jit, NumPy; 5 rounds
    python bench/bench_separate.py --rounds 7 --only mlp_b1,mlp_b64,lenet_b64
    python bench/bench_separate.py --guest               # PyTorch / NumPy with and without `import fastbp`

Every round starts one fresh process per configuration (python bench/workloads.py <framework>), in an order
that rotates from round to round, so a burst of load from other processes does not always hit the same
framework. A process times all its workloads (warm-up, then the median of many calls); the table gives, per
workload and configuration, the median over rounds of those per-process medians and the range (min-max over
rounds). Nothing here sets an environment variable or a thread count: each process runs with the environment
this script was started with. Frameworks that are not installed are skipped.

--guest answers "does importing fastbp slow the other libraries in the process?": PyTorch's and NumPy's steps
alone, after `import fastbp`, and after `import fastbp` plus a few fastbp training steps (fastbp's thread
pools then exist and have run).

bench/bench_mlp.py, bench_conv.py and bench_optim.py keep the older view (all frameworks in one process,
interleaved rounds) as a secondary one. Results: bench/results/separate.json (or guest.json)."""
import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from workloads import WORKLOADS  # noqa: E402  (imports NumPy only)

RESULTS_DIR = os.path.join(HERE, "results")
MAIN_CONFIGS = [("fastbp", "fastbp", None), ("torch", "torch", None), ("jax", "jax", None),
                ("numpy", "numpy", None)]

# fastbp with the load-adaptive thread count (fastbp.set_threads_adaptive(True)): --adaptive-too
ADAPTIVE_CONFIG = ("fastbp adaptive threads", "fastbp", "adaptive")
GUEST_CONFIGS = [("torch", "torch", None), ("torch+import fastbp", "torch", "fastbp"),
                 ("torch+fastbp steps", "torch", "fastbp-step"),
                 ("numpy", "numpy", None), ("numpy+import fastbp", "numpy", "fastbp"),
                 ("numpy+fastbp steps", "numpy", "fastbp-step")]
GUEST_WORKLOADS = "mlp_b1,mlp_b64,mlp_b256,lenet_b64,gemm_1024"


def installed(framework):
    if framework == "fastbp":
        return True
    return importlib.util.find_spec(framework) is not None


def run_worker(framework, pre_import, only, scale):
    cmd = [sys.executable, os.path.join(HERE, "workloads.py"), framework, "--scale", str(scale)]
    if only:
        cmd += ["--only", only]
    if pre_import == "adaptive":
        cmd += ["--fastbp-adaptive-threads"]
    elif pre_import:
        cmd += ["--pre-import", pre_import]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated workloads (default: all)")
    ap.add_argument("--frameworks", default="", help="comma-separated configuration labels (default: all)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the timed call counts per process")
    ap.add_argument("--guest", action="store_true", help="PyTorch/NumPy with and without `import fastbp`")
    ap.add_argument("--adaptive-too", action="store_true",
                    help="also fastbp with set_threads_adaptive(True) (one thread while the machine is oversubscribed)")
    ap.add_argument("--out", default=None, help="result file name (default separate.json / guest.json)")
    args = ap.parse_args(argv)
    configs = GUEST_CONFIGS if args.guest else MAIN_CONFIGS + ([ADAPTIVE_CONFIG] if args.adaptive_too else [])
    only = args.only or (GUEST_WORKLOADS if args.guest else "")
    if args.frameworks:
        keep = args.frameworks.split(",")
        configs = [c for c in configs if c[0] in keep]
    configs = [c for c in configs if installed(c[1])]
    times = {}  # (workload, label) -> [per-process median ms]
    load = [os.getloadavg()]
    t0 = time.time()
    for r in range(args.rounds):
        k = r % len(configs)
        for label, fw, pre in configs[k:] + configs[:k]:
            for rec in run_worker(fw, pre, only, args.scale):
                times.setdefault((rec["workload"], label), []).append(rec["median_ms"])
                if rec["env_changed"] and pre and pre != "adaptive":
                    times.setdefault(("_env_changed", label), []).append(rec["env_changed"])
        load.append(os.getloadavg())
        print(f"round {r + 1}/{args.rounds} done ({time.time() - t0:.0f} s, load {load[-1][0]:.2f})",
              file=sys.stderr, flush=True)
    labels = [c[0] for c in configs]
    names = [w for w in (only.split(",") if only else WORKLOADS)]
    rows = []
    for w in names:
        row = {"workload": w}
        meds = {}
        for lab in labels:
            v = times.get((w, lab))
            if v:
                meds[lab] = statistics.median(v)
                row[lab] = f"{meds[lab]:.3f} ({min(v):.3f}-{max(v):.3f})"
        if not args.guest and "fastbp" in meds:
            others = {k: v for k, v in meds.items() if k in ("torch", "jax")}
            if others:
                best = min(others, key=others.get)
                row["fastbp/best"] = f"{meds['fastbp'] / others[best]:.2f}x {best}"
        if args.guest:
            for base in ("torch", "numpy"):
                for lab in labels:
                    if lab.startswith(base + "+") and base in meds and lab in meds:
                        row[f"{lab}/{base}"] = f"{meds[lab] / meds[base]:.2f}"
        rows.append(row)
    cols = ["workload"] + labels + sorted({k for r in rows for k in r if "/" in k})
    widths = {c: max(len(c), *(len(str(r.get(c, "-"))) for r in rows)) for c in cols}
    print(f"ms per call: median over {args.rounds} processes per configuration (min-max over processes); "
          f"each process its own framework only, default environment")
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "-")).ljust(widths[c]) for c in cols))
    env_notes = {lab: times[("_env_changed", lab)][0] for lab in labels if ("_env_changed", lab) in times}
    if env_notes:
        print("environment variables changed inside the process by the pre-import:", env_notes)
    print(f"load average (1 min) during the run: {min(l[0] for l in load):.2f}-{max(l[0] for l in load):.2f} "
          f"on {os.cpu_count()} CPUs")
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, args.out or ("guest.json" if args.guest else "separate.json"))
    with open(path, "w") as f:
        json.dump({"benchmark": "guest" if args.guest else "separate", "rounds": args.rounds,
                   "python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                   "load_average": load, "rows": rows,
                   "raw": {f"{w}|{lab}": v for (w, lab), v in times.items() if w != "_env_changed"}}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
