/* Sums of a float or double array in double, for conv2d's bias gradient (csrc/conv.pyx). */
#ifndef FASTBP_SUMS_H
#define FASTBP_SUMS_H
#include <stddef.h>

#include "fastbp_compat.h"
#include "fastbp_clones.h"

/* Sum of r[0 .. n) in double: sixteen partial sums (lane k adds r[k], r[k + 16], ... in that order; the
   tail goes to lane 0), combined in a fixed tree. The lanes make the loop vectorizable without
   reassociating anything, so every clone gives the same bits. */
#define FASTBP_PLANE_SUM(NAME, REAL)                                          \
    FASTBP_CLONES static double NAME(const REAL* restrict r, ptrdiff_t n)     \
    {                                                                         \
        double s[16] = {0};                                                   \
        ptrdiff_t p, k, n16 = n / 16 * 16;                                    \
        for (p = 0; p < n16; p += 16)                                         \
            for (k = 0; k < 16; k++)                                          \
                s[k] += r[p + k];                                             \
        for (p = n16; p < n; p++)                                             \
            s[0] += r[p];                                                     \
        for (k = 0; k < 8; k++)                                               \
            s[k] = s[k] + s[k + 8];                                           \
        for (k = 0; k < 4; k++)                                               \
            s[k] = s[k] + s[k + 4];                                           \
        return (s[0] + s[2]) + (s[1] + s[3]);                                 \
    }

FASTBP_PLANE_SUM(plane_sum_f, float)
FASTBP_PLANE_SUM(plane_sum_d, double)
#undef FASTBP_PLANE_SUM

#endif
