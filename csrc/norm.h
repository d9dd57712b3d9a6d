/* Per-channel loops of batch normalization (csrc/norm.pyx). x is a C-contiguous (N, C, L) array (L = the
   product of the dimensions after the channel one, 1 for (N, C) input); channel c is the N planes
   x[n, c, 0 .. L). Each function handles one channel, serially, in a fixed order, so the result does not
   depend on which thread runs it or on how many threads there are.

   Sums are in double over eight partial sums (lane k adds the elements p with p % 8 == k of each plane, in
   plane order; a plane's tail goes to lane 0), combined in a fixed tree. The lanes are two 4-double vectors
   (GCC vector extensions: GCC left the equivalent scalar loop unvectorized, 2-3x slower); every operation is
   elementwise in the order written, so every clone (fastbp_clones.h) computes the same bits as the plain C
   loop would. Elementwise outputs are computed in the array's own precision (ISO C mode: no contraction
   into fused multiply-adds). */
#ifndef FASTBP_NORM_H
#define FASTBP_NORM_H
#include <stddef.h>

#include "fastbp_clones.h"

typedef double fastbp_v4d __attribute__((vector_size(32)));
typedef float fastbp_v4f __attribute__((vector_size(16)));

/* dst = four consecutive values at p (any alignment) as doubles (macros, not functions: a function returning
   a 32-byte vector draws GCC's ABI warning in the baseline build). */
#define FASTBP_LOAD4_f(dst, p)                                                                               \
    do {                                                                                                     \
        fastbp_v4f v_;                                                                                       \
        __builtin_memcpy(&v_, (p), sizeof v_);                                                               \
        (dst) = __builtin_convertvector(v_, fastbp_v4d);                                                     \
    } while (0)
#define FASTBP_LOAD4_d(dst, p) __builtin_memcpy(&(dst), (p), sizeof(fastbp_v4d))

#define FASTBP_LANES_SUM(s) ((((s)[0] + (s)[4]) + ((s)[2] + (s)[6])) + (((s)[1] + (s)[5]) + ((s)[3] + (s)[7])))

#define FASTBP_NORM_FUNCS(SUF, REAL)                                                                          \
    /* Mean and biased variance of channel c, shifted by the channel's first element K (sums of x - K and \
       (x - K)^2): one pass, and no cancellation unless the mean is far from K relative to the spread. */ \
    FASTBP_CLONES static void bn_stats_##SUF(const REAL* restrict x, ptrdiff_t N, ptrdiff_t C, ptrdiff_t L, \
                                             ptrdiff_t c, double* mean, double* var)                       \
    {                                                                                                     \
        fastbp_v4d a0 = {0, 0, 0, 0}, a1 = a0, q0 = a0, q1 = a0, d0, d1;                                  \
        const double K0 = (double)x[c * L];                                                               \
        /* an infinite or NaN first element would turn every x - K into inf or NaN (-inf - -inf = NaN):  \
           no shift then, so the mean is the IEEE sum's (+-inf or NaN, as PyTorch's) */                     \
        const double K = K0 - K0 == 0 ? K0 : 0.0;                                                         \
        const fastbp_v4d K4 = {K, K, K, K};                                                               \
        ptrdiff_t n, p, k, L8 = L / 8 * 8;                                                                \
        for (n = 0; n < N; n++) {                                                                         \
            const REAL* restrict r = x + (n * C + c) * L;                                                 \
            for (p = 0; p < L8; p += 8) {                                                                 \
                FASTBP_LOAD4_##SUF(d0, r + p);                                                            \
                FASTBP_LOAD4_##SUF(d1, r + p + 4);                                                        \
                d0 -= K4;                                                                                 \
                d1 -= K4;                                                                                 \
                a0 += d0;                                                                                 \
                a1 += d1;                                                                                 \
                q0 += d0 * d0;                                                                            \
                q1 += d1 * d1;                                                                            \
            }                                                                                             \
            for (p = L8; p < L; p++) {                                                                    \
                double d = (double)r[p] - K;                                                              \
                a0[0] += d;                                                                               \
                q0[0] += d * d;                                                                           \
            }                                                                                             \
        }                                                                                                 \
        double s1[8], s2[8];                                                                              \
        for (k = 0; k < 4; k++) {                                                                         \
            s1[k] = a0[k];                                                                                \
            s1[k + 4] = a1[k];                                                                            \
            s2[k] = q0[k];                                                                                \
            s2[k + 4] = q1[k];                                                                            \
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
        fastbp_v4d a0 = {0, 0, 0, 0}, a1 = a0, b0 = a0, b1 = a0, g0, g1, x0, x1;                          \
        const fastbp_v4d M4 = {mean, mean, mean, mean};                                                   \
        ptrdiff_t n, p, k, L8 = L / 8 * 8;                                                                \
        for (n = 0; n < N; n++) {                                                                         \
            const REAL* restrict gr = g + (n * C + c) * L;                                                \
            const REAL* restrict r = x + (n * C + c) * L;                                                 \
            for (p = 0; p < L8; p += 8) {                                                                 \
                FASTBP_LOAD4_##SUF(g0, gr + p);                                                           \
                FASTBP_LOAD4_##SUF(g1, gr + p + 4);                                                       \
                FASTBP_LOAD4_##SUF(x0, r + p);                                                            \
                FASTBP_LOAD4_##SUF(x1, r + p + 4);                                                        \
                a0 += g0;                                                                                 \
                a1 += g1;                                                                                 \
                b0 += g0 * (x0 - M4);                                                                     \
                b1 += g1 * (x1 - M4);                                                                     \
            }                                                                                             \
            for (p = L8; p < L; p++) {                                                                    \
                double gv = (double)gr[p];                                                                \
                a0[0] += gv;                                                                              \
                b0[0] += gv * ((double)r[p] - mean);                                                      \
            }                                                                                             \
        }                                                                                                 \
        double a[8], b[8];                                                                                \
        for (k = 0; k < 4; k++) {                                                                         \
            a[k] = a0[k];                                                                                 \
            a[k + 4] = a1[k];                                                                             \
            b[k] = b0[k];                                                                                 \
            b[k + 4] = b1[k];                                                                             \
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
