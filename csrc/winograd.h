/* Winograd F(2x2, 3x3) tile transforms used by csrc/conv.pyx (_forward_wino, _backward_wino), for float
   (suffix _f) and double (_d). They are plain C99 loops over rows of tiles, written here rather than in
   Cython only to mark the pointers `restrict`: Cython cannot, and without it GCC gave up on the loops that
   read one buffer and write four (too many runtime alias checks) and emitted scalar code. With it the
   loops vectorize at -O3 with the baseline instruction set (no -march flags, no -ffast-math: the
   arithmetic, and its order, is exactly what the C says).

   Layouts (see conv.pyx): tile t = th TW + tw covers output rows 2 th, 2 th + 1 and columns 2 tw, 2 tw + 1;
   16 transformed planes xi = 4 i + j, each holding channel-major tiles, CT (input) or OT (output) apart.
   Callers guarantee the buffers do not overlap (separate parts of one workspace slot). */
#ifndef FASTBP_WINOGRAD_H
#define FASTBP_WINOGRAD_H
#include <stddef.h>

/* The transforms move a lot of data per arithmetic operation, so wider vectors help (one thread, the
   benchmark conv: forward 0.90x, backward 0.95x the time with AVX-512 code). GCC's target_clones compiles
   each function for the baseline and for AVX2 / AVX-512 and picks one at load time from what the CPU
   reports (an ifunc; glibc on x86-64), so the module still runs on any x86-64 and nothing changes the
   process's floating-point mode. The clones compute the same bits: additions and subtractions only, in
   the order the C gives (ISO C mode: no contraction, no reassociation). FASTBP_NO_CLONES=1 at build time
   (or another compiler / platform) builds the baseline only. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(FASTBP_NO_CLONES)
#define FASTBP_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define FASTBP_CLONES
#endif

#define REAL float
#define WFN(name) name##_f
#include "winograd_impl.h"
#undef REAL
#undef WFN

#define REAL double
#define WFN(name) name##_d
#include "winograd_impl.h"
#undef REAL
#undef WFN

#endif
