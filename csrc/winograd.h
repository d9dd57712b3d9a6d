/* Winograd F(2x2, 3x3) tile transforms used by csrc/conv.pyx (_forward_wino, _backward_wino), for float
   (suffix _f) and double (_d). They are plain C99 loops over rows of tiles, written here rather than in
   Cython only to mark the pointers `restrict`: Cython cannot, and without it GCC gave up on the loops that
   read one buffer and write four (too many runtime alias checks) and emitted scalar code. With it the
   loops vectorize at -O3 with the baseline instruction set (no -march flags, no -ffast-math: the
   arithmetic, and its order, is exactly what the C says), and FASTBP_CLONES adds AVX2 and AVX-512
   variants chosen at load time (fastbp_clones.h).

   Layouts (see conv.pyx): tile t = th TW + tw covers output rows 2 th, 2 th + 1 and columns 2 tw, 2 tw + 1;
   16 transformed planes xi = 4 i + j, each holding channel-major tiles, CT (input) or OT (output) apart.
   TW may exceed the tiles the output needs (conv.pyx widens rows one or two tiles short of a multiple of
   16); the extra tiles read zeros and their results are dropped.
   Callers guarantee the buffers do not overlap (separate parts of one workspace slot). */
#ifndef FASTBP_WINOGRAD_H
#define FASTBP_WINOGRAD_H
#include <stddef.h>

#include "fastbp_compat.h"
#include "fastbp_clones.h"

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
