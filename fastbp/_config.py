"""Build and runtime configuration: threads, BLAS, OpenMP, and `fastbp info`."""
import ctypes
import itertools
import json
import os

import numpy as np
import scipy

from . import _backend
from ._version import __version__


def _threadpoolctl():
    """threadpoolctl, imported without its side effect on the environment.

    threadpoolctl sets KMP_DUPLICATE_LIB_OK=True when it is first imported (a setting of Intel's OpenMP
    runtime, which PyTorch or MKL may load later in the same process). fastbp only uses it to find the BLAS
    library behind scipy.linalg.cython_blas, so the variable is removed again unless the user had set it
    (or threadpoolctl was already imported by someone else)."""
    import sys
    if "threadpoolctl" in sys.modules:
        return sys.modules["threadpoolctl"]
    before = os.environ.get("KMP_DUPLICATE_LIB_OK")
    import threadpoolctl
    if before is None:
        os.environ.pop("KMP_DUPLICATE_LIB_OK", None)
    elif os.environ.get("KMP_DUPLICATE_LIB_OK") != before:
        os.environ["KMP_DUPLICATE_LIB_OK"] = before
    return threadpoolctl


def _runtime():
    from ._C import _runtime
    return _runtime


def _is_scipy_bundled(path):
    """Whether a library path is one bundled in SciPy's wheel: `scipy.libs/` (Linux auditwheel, Windows
    delvewheel) or `scipy/.dylibs/` (macOS delocate). NumPy bundles its own OpenBLAS the same way
    (`numpy.libs`, `numpy/.dylibs`); that one is not behind cython_blas."""
    parts = os.path.normpath(path or "").replace("\\", "/").split("/")
    return "scipy.libs" in parts or any(a == "scipy" and b == ".dylibs" for a, b in zip(parts, parts[1:]))


def _scipy_blas_pools():
    """threadpoolctl entries for the BLAS library behind scipy.linalg.cython_blas (our GEMM)."""
    import scipy.linalg.cython_blas  # noqa: F401  (make sure it is loaded)
    pools = _threadpoolctl().threadpool_info()
    ours = [p for p in pools if p.get("user_api") == "blas" and _is_scipy_bundled(p.get("filepath"))]
    return ours or [p for p in pools if p.get("user_api") == "blas"]


def _scipy_openblas_thread_functions():
    """(set_num_threads, get_num_threads) ctypes functions of the OpenBLAS behind scipy's cython_blas, or None.

    Only for OpenBLAS with its own (pthreads) thread pool: there the count is process-wide, so the conv
    kernels can make BLAS single-threaded around their parallel region. The symbol names carry a
    build-dependent prefix/suffix (scipy_openblas_set_num_threads, openblas_set_num_threads64_, ...)."""
    import scipy.linalg.cython_blas  # noqa: F401  (make sure it is loaded)
    for lc in _threadpoolctl().ThreadpoolController().lib_controllers:
        if getattr(lc, "internal_api", None) != "openblas" or not _is_scipy_bundled(lc.filepath):
            continue
        if getattr(lc, "threading_layer", None) == "openmp":
            return None
        for pre, suf in itertools.product(("scipy_", ""), ("", "64_", "_64")):
            try:
                fset = getattr(lc.dynlib, f"{pre}openblas_set_num_threads{suf}")
                fget = getattr(lc.dynlib, f"{pre}openblas_get_num_threads{suf}")
            except AttributeError:
                continue
            return fset, fget
    return None


def _conv_module():
    """The compiled conv kernels, or None on the reference-only backend."""
    return dict(zip(_backend.FAMILIES, _backend.compiled_modules)).get("conv")


def _install_blas_thread_hooks():
    """Hand the BLAS thread setter/getter to the compiled conv kernels (see csrc/conv.pyx, Design); returns
    whether they were set. Without them conv2d keeps BLAS calls outside its OpenMP loops. A build without
    OpenMP gets none: its sample loop would run on one thread with BLAS held to one thread inside, slower than
    threaded BLAS outside."""
    conv = _conv_module()
    if conv is None:
        return False
    if not _runtime().openmp_enabled():
        conv._set_blas_thread_hooks(0, 0)
        return False
    fns = _scipy_openblas_thread_functions()
    if fns is None:
        conv._set_blas_thread_hooks(0, 0)
        return False
    conv._set_blas_thread_hooks(*(ctypes.cast(f, ctypes.c_void_p).value for f in fns))
    return True


def _conv_blas_thread_hook():
    conv = _conv_module()
    return conv is not None and conv._blas_thread_hooks_set()


def _conv_transforms_variant():
    """The instruction-set variant of the conv transforms the loader picked (None without compiled kernels)."""
    conv = _conv_module()
    return conv._simd_variant() if conv is not None else None


def build_info():
    """The facts of the build that produced the compiled modules (compiler, flags, OpenMP, instruction-set
    clones, Cython and NumPy versions), as recorded by setup.py in fastbp/_C/_build_info.json. An empty dict
    when there is no record (modules built by an older setup.py, or none built)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_C", "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def get_num_threads():
    """Threads our OpenMP kernels use (1 without OpenMP or the compiled backend, and in a forked child)."""
    if _backend.compiled is None:
        return 1
    return _runtime().get_num_threads()


def set_num_threads(n):
    """One setting for both of fastbp's pools: the OpenMP threads of our kernels and the BLAS threads behind
    GEMM (the OpenBLAS that scipy.linalg.cython_blas links, shared with scipy.linalg). NumPy's own BLAS and
    other libraries' thread pools are left alone.

    It holds for every Python thread (the count is passed to each parallel region, not set in the calling
    thread's OpenMP state). Respects OMP_NUM_THREADS at start-up (both libraries read it); call this to
    change it later. In a child made by os.fork() the kernels stay on one thread (see _after_fork_in_child)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    if _backend.compiled is not None:
        _runtime().set_num_threads(n)
    fns = _scipy_openblas_thread_functions()
    if fns is not None:
        fns[0](n)
        return
    for lc in _threadpoolctl().ThreadpoolController().lib_controllers:
        if lc.user_api == "blas" and _is_scipy_bundled(lc.filepath):
            lc.set_num_threads(n)


def set_threads_adaptive(on=True):
    """Whether fastbp's parallel kernels drop to one thread while other processes oversubscribe the machine
    (1-minute load average >= 2 x CPUs + 1, back at < 2 x CPUs; checked at most once a second). Off by
    default (FASTBP_THREADS_ADAPTIVE=1 at import turns it on): on a machine whose cores are all taken by
    other processes, threaded steps spend their time waiting at barriers for descheduled threads
    (csrc/fastbp_omp.h), and one thread is steadier. It is opt-in because the load average is a guess about
    the machine: in a container it reports the host's load, and a moderately loaded machine may still run
    two threads faster. Results are the same either way. Returns the previous setting."""
    if _backend.compiled is None:
        return False
    return _runtime().set_threads_adaptive(bool(on))


def get_threads_adaptive():
    return _backend.compiled is not None and _runtime().get_threads_adaptive()


def _openblas_timeout():
    """How long idle OpenBLAS workers spin: OPENBLAS_THREAD_TIMEOUT / GOTO_THREAD_TIMEOUT if the user set
    one (OpenBLAS reads it when it loads); fastbp never sets it."""
    value = next((f"{v}={os.environ[v]}" for v in _backend.OPENBLAS_TIMEOUT_VARS if v in os.environ), None)
    if value is None:
        return "not set (OpenBLAS default; fastbp does not set it)"
    return f"{value} (set by the user)"


def _omp_wait_policy():
    """OMP_WAIT_POLICY / GOMP_SPINCOUNT as the user set them (libgomp reads them when it loads); fastbp
    never sets them."""
    vals = [f"{v}={os.environ[v]}" for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if v in os.environ]
    if not vals:
        return "not set (libgomp default; fastbp does not set it)"
    return ", ".join(vals) + " (set by the user)"


def config():
    """The facts `show_config()` prints, as a dict."""
    compiled = _backend.compiled is not None
    blas = _scipy_blas_pools()
    return {
        "version": __version__,
        "package_path": os.path.dirname(os.path.abspath(__file__)),
        "backend": _backend.get_backend(),
        "compiled_kernels_loaded": compiled,
        "openmp": bool(compiled and _runtime().openmp_enabled()),
        "num_threads": get_num_threads(),
        "threads_adaptive": get_threads_adaptive(),
        "effective_threads": _runtime().effective_threads() if compiled else 1,
        "omp_wait_policy": _omp_wait_policy(),
        "openblas_thread_timeout": _openblas_timeout(),
        "gemm_blas": [
            {"library": p.get("internal_api"), "version": p.get("version"), "threads": p.get("num_threads"),
             "path": p.get("filepath")} for p in blas
        ],
        "conv_blas_thread_hook": _conv_blas_thread_hook(),
        "conv_transforms_variant": _conv_transforms_variant(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "build": build_info(),
    }


def show_config():
    """Print version, whether the compiled kernels are loaded, OpenMP, threads and the BLAS behind GEMM."""
    c = config()
    print(f"fastbp {c['version']}")
    print(f"  backend in use:          {c['backend']}")
    print(f"  compiled kernels loaded: {'yes' if c['compiled_kernels_loaded'] else 'no'}")
    if c["openmp"]:
        print(f"  OpenMP:                  on")
        print(f"  OpenMP threads:          {c['num_threads']} ({c['effective_threads']} now; "
              f"{'one while the machine is oversubscribed' if c['threads_adaptive'] else 'fixed, whatever the load'})")
        print(f"  OpenMP wait policy:      {c['omp_wait_policy']}")
    elif c["compiled_kernels_loaded"]:
        print("  OpenMP:                  off (built without OpenMP: the kernels run on one thread; GEMM and "
              "conv2d's matrix products use BLAS threads)")
    else:
        print("  OpenMP:                  off (compiled kernels not loaded)")
    print(f"  OpenBLAS thread timeout: {c['openblas_thread_timeout']}")
    for b in c["gemm_blas"]:
        print(f"  GEMM BLAS:               {b['library']} {b['version']} ({b['threads']} threads) {b['path']}")
    if not c["gemm_blas"]:
        print("  GEMM BLAS:               scipy.linalg.cython_blas (library not identified)")
    if c["compiled_kernels_loaded"]:
        if not c["openmp"]:
            hook = "not used (serial build: conv2d calls threaded BLAS)"
        elif c["conv_blas_thread_hook"]:
            hook = "found (conv2d runs samples in parallel, BLAS single-threaded inside)"
        else:
            hook = "not found (conv2d calls threaded BLAS outside its parallel loops)"
        print(f"  conv BLAS thread hook:   {hook}")
        print(f"  conv transforms:         {c['conv_transforms_variant']} variant (Winograd transforms, bias sums)")
    b = c["build"]
    if b:
        flags = " ".join(b.get("extra_compile_args", []))
        print(f"  built with:              {b.get('compiler_version')} [{b.get('compiler_type')}]; {flags}")
        print(f"                           Cython {b.get('cython')}, NumPy {b.get('numpy_build')} headers, "
              f"{b.get('platform')}")
    else:
        print("  built with:              (no build record: modules built by an older setup.py)")
    print(f"  numpy {c['numpy']}, scipy {c['scipy']}")
    print(f"  package:                 {c['package_path']}")


def _after_fork_in_child():
    """libgomp's thread pool does not survive fork: a child that entered a parallel region with more than
    one thread after the parent had used the pool would wait forever for threads that do not exist. So the
    child runs every kernel on one thread (the parent is unaffected)."""
    if _backend.compiled is not None:
        _runtime()._after_fork_in_child()


def _install_debug_abort():
    """FASTBP_DEBUG=1 builds only: an exception raised inside a kernel's noexcept helper (a bounds check)
    cannot propagate, and Cython would only print "Exception ignored in ..." and carry on with whatever the
    helper left behind. In a debug build that is a bug to stop at: print it, then abort the process."""
    if _backend.compiled is None or not _runtime().debug_build():
        return False
    import sys
    previous = sys.unraisablehook

    def hook(unraisable):
        previous(unraisable)
        if "fastbp._C." in str(getattr(unraisable, "object", "")):
            sys.stderr.write("fastbp debug build: error inside a compiled kernel (see above); aborting\n")
            sys.stderr.flush()
            os.abort()

    sys.unraisablehook = hook
    return True


_install_blas_thread_hooks()
_install_debug_abort()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
