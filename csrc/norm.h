/* Per-channel loops of batch normalization (csrc/norm.pyx). x is a C-contiguous (N, C, L) array (L = the
   product of the dimensions after the channel one, 1 for (N, C) input); channel c is the N planes
   x[n, c, 0 .. L). Each function handles one channel, serially, in a fixed order, so the result does not
   depend on which thread runs it or on how many threads there are.

   Sums are in double over eight partial sums (lane k adds the elements p with p % 8 == k of each plane, in
   plane order; a plane's tail goes to lane 0), combined in a fixed tree: vectorizable without
   reassociation, so every clone (fastbp_clones.h) computes the same bits. Elementwise outputs are computed
   in the array's own precision (ISO C mode: no contraction into fused multiply-adds). */
#ifndef FASTBP_NORM_H
#define FASTBP_NORM_H
#include <stddef.h>

#include "fastbp_clones.h"

#define FASTBP_LANES_SUM(s) ((((s)[0] + (s)[4]) + ((s)[2] + (s)[6])) + (((s)[1] + (s)[5]) + ((s)[3] + (s)[7])))

#define FASTBP_NORM_FUNCS(SUF, REAL)                                                                          \
    /* Mean and biased variance of channel c, shifted by the channel's first element K (sums of x - K and \
       (x - K)^2): one pass, and no cancellation unless the mean is far from K relative to the spread. */ \
    FASTBP_CLONES static void bn_stats_##SUF(const REAL* restrict x, ptrdiff_t N, ptrdiff_t C, ptrdiff_t L, \
                                             ptrdiff_t c, double* mean, double* var)                       \
    {                                                                                                     \
        double s1[8] = {0}, s2[8] = {0};                                                                  \
        const double K = (double)x[c * L];                                                                \
        ptrdiff_t n, p, k, L8 = L / 8 * 8;                                                                \
        for (n = 0; n < N; n++) {                                                                         \
            const REAL* restrict r = x + (n * C + c) * L;                                                 \
            for (p = 0; p < L8; p += 8)                                                                   \
                for (k = 0; k < 8; k++) {                                                                 \
                    double d = (double)r[p + k] - K;                                                      \
                    s1[k] += d;                                                                           \
                    s2[k] += d * d;                                                                       \
                }                                                                                         \
            for (p = L8; p < L; p++) {                                                                    \
                double d = (double)r[p] - K;                                                              \
                s1[0] += d;                                                                               \
                s2[0] += d * d;                                                                           \
            }                                                                                             \
        }                                                                                                 \
        double cnt = (double)(N * L);                                                                     \
        double m1 = FASTBP_LANES_SUM(s1) / cnt;                                                           \
        double v = FASTBP_LANES_SUM(s2) / cnt - m1 * m1;                                                  \
        *mean = K + m1;                                                                                   \
        *var = v < 0 ? 0 : v; /* NaN passes through */                                                    \
    }                                                                                                     \
                                                                                                          \
    /* y = (x - m) * scale + shift over channel c. */                                                     \
    FASTBP_CLONES static void bn_apply_##SUF(const REAL* restrict x, REAL* restrict y, ptrdiff_t N,       \
                                             ptrdiff_t C, ptrdiff_t L, ptrdiff_t c, REAL m, REAL scale,   \
                                             REAL shift)                                                  \
    {                                                                                                     \
        ptrdiff_t n, p;                                                                                   \
        for (n = 0; n < N; n++) {                                                                         \
            const REAL* restrict r = x + (n * C + c) * L;                                                 \
            REAL* restrict o = y + (n * C + c) * L;                                                       \
            for (p = 0; p < L; p++)                                                                       \
                o[p] = (r[p] - m) * scale + shift;                                                        \
        }                                                                                                 \
    }                                                                                                     \
                                                                                                          \
    /* sg = sum of g, sgx = sum of g (x - mean) over channel c, in double. */                             \
    FASTBP_CLONES static void bn_grad_sums_##SUF(const REAL* restrict g, const REAL* restrict x,         \
                                                 ptrdiff_t N, ptrdiff_t C, ptrdiff_t L, ptrdiff_t c,      \
                                                 double mean, double* sg, double* sgx)                    \
    {                                                                                                     \
        double a[8] = {0}, b[8] = {0};                                                                    \
        ptrdiff_t n, p, k, L8 = L / 8 * 8;                                                                \
        for (n = 0; n < N; n++) {                                                                         \
            const REAL* restrict gr = g + (n * C + c) * L;                                                \
            const REAL* restrict r = x + (n * C + c) * L;                                                 \
            for (p = 0; p < L8; p += 8)                                                                   \
                for (k = 0; k < 8; k++) {                                                                 \
                    double gv = (double)gr[p + k];                                                        \
                    a[k] += gv;                                                                           \
                    b[k] += gv * ((double)r[p + k] - mean);                                               \
                }                                                                                         \
            for (p = L8; p < L; p++) {                                                                    \
                double gv = (double)gr[p];                                                                \
                a[0] += gv;                                                                               \
                b[0] += gv * ((double)r[p] - mean);                                                       \
            }                                                                                             \
        }                                                                                                 \
        *sg = FASTBP_LANES_SUM(a);                                                                        \
        *sgx = FASTBP_LANES_SUM(b);                                                                       \
    }                                                                                                     \
                                                                                                          \
    /* dx = A g + (B (x - m) + E) over channel c; dx = A g when the batch statistics are constants        \
       (evaluation mode: B = E = 0 and x is not read). */                                                 \
    FASTBP_CLONES static void bn_grad_apply_##SUF(const REAL* restrict g, const REAL* restrict x,        \
                                                  REAL* restrict dx, ptrdiff_t N, ptrdiff_t C,            \
                                                  ptrdiff_t L, ptrdiff_t c, REAL m, REAL A, REAL B,       \
                                                  REAL E, int constant_stats)                             \
    {                                                                                                     \
        ptrdiff_t n, p;                                                                                   \
        for (n = 0; n < N; n++) {                                                                         \
            const REAL* restrict gr = g + (n * C + c) * L;                                                \
            const REAL* restrict r = x + (n * C + c) * L;                                                 \
            REAL* restrict o = dx + (n * C + c) * L;                                                      \
            if (constant_stats)                                                                           \
                for (p = 0; p < L; p++)                                                                   \
                    o[p] = A * gr[p];                                                                     \
            else                                                                                          \
                for (p = 0; p < L; p++)                                                                   \
                    o[p] = A * gr[p] + (B * (r[p] - m) + E);                                              \
        }                                                                                                 \
    }

FASTBP_NORM_FUNCS(f, float)
FASTBP_NORM_FUNCS(d, double)
#undef FASTBP_NORM_FUNCS

#endif
