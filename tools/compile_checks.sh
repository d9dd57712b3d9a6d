#!/usr/bin/env bash
# Compile-only checks of the platform branches of the C code that this (x86-64 Linux) machine cannot run.
# each available compiler builds csrc's headers with the macros its platform would see, and the aarch64
# cross compiler builds every Cython-generated module. Needs the generated csrc/*.c (any build makes them)
# and, for full coverage, Debian's clang, musl-tools and gcc-aarch64-linux-gnu. Missing tools are reported
# as skipped, never as passed.
set -uo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
cat > "$tmp/hdr.c" <<'C'
#include "fastbp_omp.h"
#include "sums.h"
#include "winograd.h"
#if FASTBP_HAVE_CLONES != EXPECT_CLONES
#error "FASTBP_HAVE_CLONES differs from what this platform expects"
#endif
int fastbp_hdr_check(void) { return fastbp_clone_variant()[0] + omp_get_max_threads(); }
C
check() {  # check NAME EXPECT_CLONES COMPILER ARGS...: compile the headers
    local name=$1 clones=$2 cc=$3; shift 3
    if ! command -v "$cc" >/dev/null; then echo "SKIP  $name ($cc not installed)"; return; fi
    if "$cc" "$@" -Wno-unused-function -Icsrc -DEXPECT_CLONES="$clones" \
        -c "$tmp/hdr.c" -o "$tmp/hdr.o" 2>"$tmp/err"; then
        echo "ok    $name (clones=$clones)"
    else
        echo "FAIL  $name"; head -20 "$tmp/err"; fail=1
    fi
}
check "gcc x86-64 glibc, OpenMP" 1 gcc -std=c99 -O2 -fopenmp
check "gcc x86-64 glibc, serial" 1 gcc -std=c99 -O2
check "gcc x86-64, FASTBP_NO_CLONES" 0 gcc -std=c99 -O2 -DFASTBP_NO_CLONES=1
check "musl-gcc x86-64 (musllinux: no ifunc)" 0 musl-gcc -std=c99 -O2
check "gcc aarch64 (manylinux aarch64)" 0 aarch64-linux-gnu-gcc -std=c99 -O2 -fopenmp
check "clang x86-64 Linux" 0 clang -std=c99 -O2
check "clang arm64 macOS target" 0 clang --target=arm64-apple-macos11 -ffreestanding -std=c99 -fsyntax-only
check "clang x86-64 macOS target" 0 clang --target=x86_64-apple-macos10.13 -ffreestanding -std=c99 \
    -fsyntax-only
# MSVC without /std:c11 is C89 plus extensions: `restrict` and `inline` must come from fastbp_compat.h
msvc=(--target=x86_64-pc-windows-msvc -fms-compatibility -ffreestanding -fsyntax-only)
check "clang as MSVC, C89 mode (Windows, no /std:c11)" 0 clang "${msvc[@]}" -std=c89 -Wno-comment
check "clang as MSVC, C11 mode" 0 clang "${msvc[@]}" -std=c11
# every generated module, cross-compiled for aarch64 with OpenMP (the host's Python and NumPy headers:
# same LP64 data model; a compile check, not a build)
if command -v aarch64-linux-gnu-gcc >/dev/null && ls csrc/*.c >/dev/null 2>&1; then
    pyinc=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
    npinc=$(python -c "import numpy; print(numpy.get_include())")
    for f in csrc/*.c; do
        if aarch64-linux-gnu-gcc -std=c99 -O1 -fopenmp -Wno-unused-function -Wno-unreachable-code \
            -DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION -I"$pyinc" -I"$npinc" -Icsrc \
            -c "$f" -o "$tmp/m.o" 2>"$tmp/err"; then
            echo "ok    aarch64 module $f"
        else
            echo "FAIL  aarch64 module $f"; head -20 "$tmp/err"; fail=1
        fi
    done
else
    echo "SKIP  aarch64 modules (no aarch64-linux-gnu-gcc or no generated csrc/*.c)"
fi
exit $fail
