"""Build the Cython kernels in csrc/ as extension modules fastbp._C.<family>.

Everything about the build lives here: the extension list (one module per csrc/*.pyx), the compiler
directives (set once), the compiler flags per compiler family, and two probes (OpenMP, GCC's target_clones).
We never pass -march=native or -ffast-math: wheels must run on any CPU of their architecture and must not
change the process's floating-point mode.

The generated C files are not shipped in the source distribution: Cython is a build requirement (pip
installs it in the build environment), the .pyx files are the only source of truth, and the .c files would
be ten times the size of everything else. A source tree without csrc/*.pyx stops the build with an error.

The modules are compiled in parallel (one job per core; `-j N` or FASTBP_BUILD_JOBS=N to change it) and
each one prints a line when it starts and ends (shown by `pip install -v`). The facts of the build (compiler,
flags, OpenMP, instruction-set clones) are written to fastbp/_C/_build_info.json, which `fastbp info` reads.

Environment switches:
  FASTBP_DEBUG=1     build with bounds checking and wraparound checks on (slow; for hunting bugs). An error
                     inside a kernel's noexcept helper (which Cython can only print as "Exception
                     ignored") then aborts the process (fastbp._config installs the check).
  FASTBP_OPENMP=0    build without OpenMP even if the compiler supports it.
  FASTBP_BUILD_JOBS=N  compile N modules at once (default: the number of cores).
  FASTBP_BUILD_ONLY=conv,pool   development only: build just these csrc families (with --inplace).
  FASTBP_NO_CLONES=1 build the Winograd transforms for the baseline instruction set only (no AVX2 /
                     AVX-512 clones chosen at load time; see csrc/fastbp_clones.h).
  FASTBP_SANITIZE=address,undefined   development only: add -fsanitize= with these checks (plus -g and frame
                     pointers) to CFLAGS and LDFLAGS; OpenMP stays on, and the build fails rather than come out
                     serial. README, "Verification", says how to run the tests under it (.ci/sanitize does).
CFLAGS, CPPFLAGS and LDFLAGS are honoured by the probes and the modules alike; CFLAGS come after our flags,
so e.g. CFLAGS="-O1 -g -fsanitize=address" LDFLAGS=-fsanitize=address gives a sanitizer build.
"""
import glob
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.modified import newer_group

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("FASTBP_DEBUG", "0") == "1"

SANITIZE = [c for c in os.environ.get("FASTBP_SANITIZE", "").split(",") if c]
if SANITIZE:  # through CFLAGS/LDFLAGS, so the probes see exactly what the modules get
    _fsan = f"-fsanitize={','.join(SANITIZE)}"
    os.environ["CFLAGS"] = f"{os.environ.get('CFLAGS', '')} {_fsan} -fno-omit-frame-pointer -g".strip()
    os.environ["LDFLAGS"] = f"{os.environ.get('LDFLAGS', '')} {_fsan}".strip()
BUILD_INFO = "_build_info.json"  # written next to the modules in fastbp/_C

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
    "binding": True,
}

# Extra compiler flags for one kernel family (GCC/clang). -fno-math-errno lets GCC inline and vectorize sqrt
# (with errno semantics every sqrtf is a libm call that blocks vectorization). It changes no floating-point
# result (IEEE sqrt is correctly rounded either way; unlike -ffast-math it allows no reassociation); it
# only means libm calls do not set errno, which no fastbp code reads. Measured: the Adam step over 1e6
# float32 parameters went from 3.3 ms to ~1 ms on 2 threads. (MSVC inlines sqrt without being asked.)
FAMILY_COMPILE_ARGS = {"optim": ["-fno-math-errno"]}

OPENMP_PROBE = r"""
#ifndef _OPENMP
#error "the compiler did not enable OpenMP with these flags"
#endif
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += omp_get_num_threads() > 0;
    return n > 0 ? 0 : 1;
}
"""

CLONES_PROBE = r"""
#include "fastbp_clones.h"
#if !FASTBP_HAVE_CLONES
#error "no target_clones on this compiler / platform"
#endif
FASTBP_CLONES static int twice(int x) { return 2 * x; }
int main(void) { return twice(1) == 2 && fastbp_clone_variant()[0] ? 0 : 1; }
"""


def _env_flags(name):
    return shlex.split(os.environ.get(name, ""))


def _compiler_version(compiler):
    """First line of the C compiler's --version ("msvc" for MSVC), for the build record."""
    if compiler.compiler_type == "msvc":
        return "msvc"
    try:
        out = subprocess.run([compiler.compiler_so[0], "--version"], capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    except Exception as exc:  # noqa: BLE001 (only informational)
        return f"unknown ({exc})"


def _try_build(compiler, source, compile_args, link_args, include_dirs=()):
    """Compile and link `source` as a program with `compiler` and the user's CFLAGS/CPPFLAGS/LDFLAGS.

    Only compiled and linked, not run: cross builds (macOS arm64 on x86_64, aarch64 under emulation) must
    give the same answer. The source itself fails to compile when the feature is not really on (MSVC
    accepts an unknown option with a warning; the #error catches that)."""
    tmp = tempfile.mkdtemp(prefix="fastbp-probe-")
    try:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        user_c = [] if compiler.compiler_type == "msvc" else _env_flags("CFLAGS")
        user_ld = [] if compiler.compiler_type == "msvc" else _env_flags("LDFLAGS")
        objs = compiler.compile([path], output_dir=tmp, include_dirs=list(include_dirs),
                                extra_postargs=list(compile_args) + user_c)
        # link_executable uses the bare compiler (no CFLAGS/LDFLAGS, unlike the modules' link line), so the
        # user's flags are passed here: a sanitizer build needs its runtime at link time
        compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_preargs=user_c,
                                 extra_postargs=list(link_args) + user_ld)
        return True
    except Exception:  # noqa: BLE001 (any failure means "not available")
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _openmp_candidates(compiler):
    """(compile flags, link flags, include dirs) to try, in order, for this compiler."""
    if compiler.compiler_type == "msvc":
        return [(["/openmp"], [], [])]
    out = [(["-fopenmp"], ["-fopenmp"], [])]  # GCC; LLVM clang with libomp installed
    if sys.platform == "darwin":
        # Apple clang has no -fopenmp driver flag: the preprocessor flag plus libomp (Homebrew's or a
        # prefix given through CPPFLAGS/LDFLAGS)
        out.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"], []))
        for prefix in ("/opt/homebrew/opt/libomp", "/usr/local/opt/libomp"):
            if os.path.isdir(prefix):
                out.append((["-Xpreprocessor", "-fopenmp"], [f"-L{prefix}/lib", "-lomp", f"-Wl,-rpath,{prefix}/lib"],
                            [f"{prefix}/include"]))
    return out


def probe_openmp(compiler):
    """The first OpenMP flag set that compiles and links here, or None (serial build)."""
    if os.environ.get("FASTBP_OPENMP", "1") == "0":
        return None
    for cflags, lflags, incs in _openmp_candidates(compiler):
        if _try_build(compiler, OPENMP_PROBE, cflags, lflags, incs):
            return {"compile": cflags, "link": lflags, "include_dirs": incs}
    return None


def probe_clones(compiler, base_args):
    """Whether GCC's target_clones (an ifunc) builds here; musl and other toolchains without ifunc say no."""
    if os.environ.get("FASTBP_NO_CLONES", "0") == "1":
        return False, "disabled by FASTBP_NO_CLONES=1"
    if _try_build(compiler, CLONES_PROBE, base_args, [], [os.path.join(HERE, "csrc")]):
        return True, "target_clones: default, avx2, avx512f (chosen at load time)"
    return False, "baseline only (no target_clones/ifunc with this compiler and platform)"


def compile_args(compiler, openmp):
    """Our flags for this compiler family (the user's CFLAGS are appended after them)."""
    if compiler.compiler_type == "msvc":
        # /O2; `restrict` comes from csrc/fastbp_compat.h (no /std:c11 needed)
        return ["/O2"] + (["/Zi"] if DEBUG else [])
    # -g0 overrides the -g in Python's default CFLAGS: debug sections made each module ~6x its code size
    # (1.4 MB vs 220 KB for conv); FASTBP_DEBUG=1 keeps them for debugging builds
    args = ["-O3", "-std=c99", "-Wno-unused-function", "-Wno-unreachable-code", "-g" if DEBUG else "-g0"]
    if not openmp:
        # Cython evaluates prange's num_threads= into a temporary used only by the omp pragma, which a
        # serial build drops: one "set but not used" warning per prange, none of them in our code
        args.append("-Wno-unused-but-set-variable")
    return args


class BuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            jobs = os.environ.get("FASTBP_BUILD_JOBS")
            self.parallel = int(jobs) if jobs else (os.cpu_count() or 1)
        if self.parallel is True:
            self.parallel = os.cpu_count() or 1

    def run(self):
        from Cython import __version__ as cython_version
        from Cython.Build import cythonize
        import numpy as np

        if not self.extensions:
            raise SystemExit("fastbp: no extension modules to build (FASTBP_BUILD_ONLY matched no csrc/*.pyx?)")
        t0 = time.perf_counter()
        # cythonize here, not at import: the sdist ships .pyx (ext.sources), and `setup.py sdist` never
        # needs Cython. Each extension keeps its identity; only its sources become the generated C.
        generated = cythonize(self.extensions, compiler_directives=DIRECTIVES, include_path=["csrc"],
                              compile_time_env={"FASTBP_DEBUG": DEBUG}, quiet=True,
                              nthreads=self.parallel if sys.platform.startswith("linux") else 0)
        by_name = {e.name: e for e in generated}
        for ext in self.extensions:
            ext.sources = by_name[ext.name].sources
            ext.include_dirs = list(ext.include_dirs) + [np.get_include()]
        sys.stderr.write(f"fastbp: cythonized {len(self.extensions)} modules in {time.perf_counter() - t0:.1f} s\n")
        self._cython_version = cython_version
        self._numpy_version = np.__version__
        super().run()
        if self.inplace and getattr(self, "_build_info_path", None):
            # setuptools builds into build_lib, then copies the modules into the source tree: the record too
            dst_dir = self.get_finalized_command("build_py").get_package_dir("fastbp._C")
            shutil.copyfile(self._build_info_path, os.path.join(dst_dir, BUILD_INFO))

    def build_extensions(self):
        c = self.compiler
        openmp = probe_openmp(c)
        if SANITIZE and not openmp and os.environ.get("FASTBP_OPENMP", "1") != "0":
            raise RuntimeError("FASTBP_SANITIZE: OpenMP did not link with the sanitizer flags; a serial build would "
                               "not check the threaded kernels (FASTBP_OPENMP=0 builds one on purpose)")
        base = compile_args(c, openmp)
        clones, clones_note = probe_clones(c, base) if c.compiler_type != "msvc" else (False, "baseline only (MSVC)")
        user_c = [] if c.compiler_type == "msvc" else _env_flags("CFLAGS")
        serial_why = ("off (FASTBP_OPENMP=0), building serial kernels" if os.environ.get("FASTBP_OPENMP") == "0"
                      else "NOT available with this compiler, building serial kernels")
        sys.stderr.write(f"fastbp: compiler {_compiler_version(c)}; OpenMP "
                         f"{' '.join(openmp['compile']) if openmp else serial_why}; "
                         f"{clones_note}; {self.parallel} parallel jobs\n")
        for ext in self.extensions:
            ext.extra_compile_args = list(base)
            if c.compiler_type != "msvc":
                ext.extra_compile_args += FAMILY_COMPILE_ARGS.get(ext.name.rsplit(".", 1)[-1], [])
            ext.extra_link_args = []
            if openmp:
                ext.extra_compile_args += openmp["compile"]
                ext.extra_link_args += openmp["link"]
                ext.include_dirs = list(ext.include_dirs) + openmp["include_dirs"]
            ext.extra_compile_args += user_c  # last, so the user's -O/-g win
            ext.define_macros = list(ext.define_macros or []) + [
                ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                ("FASTBP_OPENMP", "1" if openmp else "0"),
                ("FASTBP_DEBUG", "1" if DEBUG else "0"),
            ]
            if not clones:
                ext.define_macros.append(("FASTBP_NO_CLONES", "1"))
        # largest generated C first: with few cores the long compiles overlap instead of one running alone
        # at the end
        self.extensions.sort(key=lambda e: -sum(os.path.getsize(f) for f in e.sources if os.path.exists(f)))
        self._progress = {"lock": threading.Lock(), "done": 0, "total": len(self.extensions)}
        t0 = time.perf_counter()
        super().build_extensions()
        sys.stderr.write(f"fastbp: {len(self.extensions)} modules built in {time.perf_counter() - t0:.1f} s\n")
        self._write_build_info(openmp, clones, clones_note)

    def build_extension(self, ext):
        t0 = time.perf_counter()
        stale = self.force or newer_group(list(ext.sources) + list(ext.depends), self.get_ext_fullpath(ext.name))
        if stale:
            sys.stderr.write(f"fastbp: compiling {ext.name} ...\n")
        super().build_extension(ext)
        p = self._progress
        with p["lock"]:
            p["done"] += 1
            what = f"done in {time.perf_counter() - t0:.1f} s" if stale else "up to date"
            sys.stderr.write(f"fastbp: [{p['done']}/{p['total']}] {ext.name} {what}\n")

    def _write_build_info(self, openmp, clones, clones_note):
        c = self.compiler
        ext = self.extensions[0]
        info = {
            "version": self.distribution.get_version(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "compiler_type": c.compiler_type,
            "compiler": " ".join(c.compiler_so) if c.compiler_type != "msvc" else "msvc",
            "compiler_version": _compiler_version(c),
            "extra_compile_args": [a for a in ext.extra_compile_args
                                   if a not in FAMILY_COMPILE_ARGS.get(ext.name.rsplit(".", 1)[-1], [])],
            "family_compile_args": FAMILY_COMPILE_ARGS,
            "extra_link_args": ext.extra_link_args,
            "define_macros": {k: v for k, v in ext.define_macros},
            "env": {k: os.environ[k] for k in ("CC", "CFLAGS", "CPPFLAGS", "LDFLAGS", "FASTBP_OPENMP",
                                               "FASTBP_NO_CLONES", "FASTBP_DEBUG") if k in os.environ},
            "openmp": bool(openmp),
            "openmp_flags": openmp or None,
            "instruction_set_clones": clones,
            "instruction_set_note": clones_note,
            "debug": DEBUG,
            "cython": self._cython_version,
            "numpy_build": self._numpy_version,
            "modules": sorted(e.name for e in self.extensions),
        }
        out_dir = os.path.dirname(self.get_ext_fullpath("fastbp._C._runtime"))
        os.makedirs(out_dir, exist_ok=True)
        self._build_info_path = os.path.join(out_dir, BUILD_INFO)
        with open(self._build_info_path, "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
            f.write("\n")


def extensions():
    pyx_files = sorted(glob.glob(os.path.join("csrc", "*.pyx")))
    if not pyx_files:
        raise SystemExit(
            f"fastbp: no Cython sources (csrc/*.pyx) in {HERE}: this source tree or sdist is incomplete and "
            "would build a package without its compiled kernels. Use a complete checkout or sdist.")
    only = [n for n in os.environ.get("FASTBP_BUILD_ONLY", "").split(",") if n]
    depends = sorted(glob.glob(os.path.join("csrc", "*.h")) + glob.glob(os.path.join("csrc", "*.pxd")))
    exts = []
    for pyx in pyx_files:
        name = os.path.splitext(os.path.basename(pyx))[0]
        if only and name not in only:
            continue
        # depends: the shared .pxd and C headers, so an edit to them rebuilds every family
        exts.append(Extension(f"fastbp._C.{name}", [pyx], include_dirs=["csrc"], depends=depends))
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
