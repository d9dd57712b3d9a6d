"""Build the Cython kernels in csrc/ as extension modules fastbp._C.<family>.

Everything about the build lives here: the extension list (one module per csrc/*.pyx), the compiler
directives (set once), and an OpenMP probe. We never pass -march=native or -ffast-math: wheels must run on
any x86-64 and must not change the process's floating-point mode.

Environment switches:
  FASTBP_DEBUG=1     build with bounds checking and wraparound checks on (slow; for hunting bugs).
  FASTBP_OPENMP=0    build without OpenMP even if the compiler supports it.
  FASTBP_BUILD_ONLY=conv,pool   development only: build just these csrc families (with --inplace).
  FASTBP_NO_CLONES=1 build the Winograd transforms for the baseline instruction set only (no AVX2 /
                     AVX-512 clones chosen at load time; see csrc/winograd.h).
  FASTBP_SANITIZE=address,undefined   build with these -fsanitize= checks (and -g, frame pointers), OpenMP
                     kept on; see README, "Sanitizers", for running the tests under them. Development only.

The OpenMP probe compiles and links with the same flags as the extensions (CFLAGS, LDFLAGS, sanitizers),
so a flag that breaks linking OpenMP shows up as a failed probe instead of silently serial kernels under
one build and threaded ones under another; the probe says why it failed.
"""
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("FASTBP_DEBUG", "0") == "1"

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
    "binding": True,
}


SANITIZE = [c for c in os.environ.get("FASTBP_SANITIZE", "").split(",") if c]
SANITIZE_ARGS = ([f"-fsanitize={','.join(SANITIZE)}", "-fno-omit-frame-pointer", "-g"] if SANITIZE else [])


def _compiler_accepts_openmp(compiler, compile_args, link_args):
    """Compile, link and run a tiny OpenMP program with the compiler and the flags the extensions will use
    (setuptools adds CFLAGS to every compile but LDFLAGS only to shared-object links, so they are added
    here by hand)."""
    if os.environ.get("FASTBP_OPENMP", "1") == "0":
        return False
    src = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn n>0?0:1;}\n"
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(src)
        objs = compiler.compile([path], output_dir=tmp, extra_postargs=compile_args + ["-fopenmp"])
        compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=link_args + ["-fopenmp"] +
                                 shlex.split(os.environ.get("LDFLAGS", "")))
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
        rc = subprocess.call([os.path.join(tmp, "probe")], env=env)
        if rc != 0:
            sys.stderr.write(f"fastbp: the OpenMP probe program exited with status {rc}\n")
        return rc == 0
    except Exception as exc:
        sys.stderr.write(f"fastbp: the OpenMP probe failed: {exc}\n")
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Extra compiler flags for one kernel family. -fno-math-errno lets GCC inline and vectorize sqrt (with
# errno semantics every sqrtf is a libm call that blocks vectorization). It changes no floating-point
# result (IEEE sqrt is correctly rounded either way; unlike -ffast-math it allows no reassociation); it
# only means libm calls do not set errno, which no fastbp code reads. Measured: the Adam step over 1e6
# float32 parameters went from 3.3 ms to ~1 ms on 2 threads.
FAMILY_COMPILE_ARGS = {"optim": ["-fno-math-errno"]}


class BuildExt(build_ext):
    def build_extensions(self):
        # -g0 overrides the -g in Python's default CFLAGS: debug sections made each module ~6x its
        # code size (1.4 MB vs 220 KB for conv); FASTBP_DEBUG=1 and sanitizer builds keep them
        common = ["-O3", "-std=c99", "-Wno-unused-function", "-Wno-unreachable-code",
                  "-g" if DEBUG or SANITIZE else "-g0"] + SANITIZE_ARGS
        openmp = _compiler_accepts_openmp(self.compiler, common, list(SANITIZE_ARGS))
        sys.stderr.write(f"fastbp: OpenMP {'enabled' if openmp else 'NOT available, building serial kernels'}\n")
        if SANITIZE:
            sys.stderr.write(f"fastbp: sanitizers {','.join(SANITIZE)} (development build)\n")
            if not openmp and os.environ.get("FASTBP_OPENMP", "1") != "0":
                raise RuntimeError("FASTBP_SANITIZE: OpenMP did not link with the sanitizer flags; a serial build "
                                   "would not check the threaded kernels (set FASTBP_OPENMP=0 to build one anyway)")
        for ext in self.extensions:
            ext.extra_compile_args = list(common)
            ext.extra_compile_args += FAMILY_COMPILE_ARGS.get(ext.name.rsplit(".", 1)[-1], [])
            ext.extra_link_args = list(SANITIZE_ARGS)
            if openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
            ext.define_macros = list(ext.define_macros or []) + [
                ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                ("FASTBP_OPENMP", "1" if openmp else "0"),
            ]
            if os.environ.get("FASTBP_NO_CLONES", "0") == "1":
                ext.define_macros.append(("FASTBP_NO_CLONES", "1"))
        super().build_extensions()


def extensions():
    exts = []
    only = [n for n in os.environ.get("FASTBP_BUILD_ONLY", "").split(",") if n]
    for pyx in sorted(glob.glob(os.path.join("csrc", "*.pyx"))):
        name = os.path.splitext(os.path.basename(pyx))[0]
        if only and name not in only:
            continue
        # depends: the shared .pxd and C headers, so an edit to them rebuilds every family (and they ship
        # in the sdist)
        exts.append(Extension(f"fastbp._C.{name}", [pyx], include_dirs=[np.get_include(), "csrc"],
                              depends=sorted(glob.glob(os.path.join("csrc", "*.h")) +
                                             glob.glob(os.path.join("csrc", "*.pxd")))))
    return cythonize(exts, compiler_directives=DIRECTIVES, include_path=["csrc"],
                     compile_time_env={"FASTBP_DEBUG": DEBUG})


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
