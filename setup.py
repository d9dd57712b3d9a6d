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
"""
import glob
import os
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


def _compiler_accepts_openmp(compiler):
    """Compile and link a tiny OpenMP program with the compiler setuptools will use."""
    if os.environ.get("FASTBP_OPENMP", "1") == "0":
        return False
    src = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn n>0?0:1;}\n"
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(src)
        objs = compiler.compile([path], output_dir=tmp, extra_postargs=["-fopenmp"])
        compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=["-fopenmp"])
        return subprocess.call([os.path.join(tmp, "probe")]) == 0
    except Exception:
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
        openmp = _compiler_accepts_openmp(self.compiler)
        sys.stderr.write(f"fastbp: OpenMP {'enabled' if openmp else 'NOT available, building serial kernels'}\n")
        for ext in self.extensions:
            # -g0 overrides the -g in Python's default CFLAGS: debug sections made each module ~6x its
            # code size (1.4 MB vs 220 KB for conv); FASTBP_DEBUG=1 keeps them for debugging builds
            ext.extra_compile_args = ["-O3", "-std=c99", "-Wno-unused-function", "-Wno-unreachable-code",
                                      "-g" if DEBUG else "-g0"]
            ext.extra_compile_args += FAMILY_COMPILE_ARGS.get(ext.name.rsplit(".", 1)[-1], [])
            ext.extra_link_args = []
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
                                             glob.glob(os.path.join("csrc", "*.pxd")) +
                                             glob.glob(os.path.join("csrc", "*.pxi")))))
    return cythonize(exts, compiler_directives=DIRECTIVES, include_path=["csrc"],
                     compile_time_env={"FASTBP_DEBUG": DEBUG})


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
