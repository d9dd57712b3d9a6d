/* Per-plane loops of batch normalization (csrc/norm.pyx). x is a C-contiguous (N, C, L) array (L = the
   product of the dimensions after the channel one); plane p = n C + c is x[n, c, 0 .. L), contiguous. Each
   function handles one plane, serially, in a fixed order; norm.pyx adds the planes' sums of a channel in
   sample order, so results do not depend on which thread runs a plane or on how many threads there are.

   Sums are in double over eight partial sums (lane k adds the elements p with p % 8 == k, a tail after the
   last multiple of 8 goes to lane 0), combined in a fixed tree. The lanes are two 4-double vectors (GCC
   vector extensions: GCC left the equivalent scalar loop unvectorized, 2-3x slower); every operation is
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

/* the four lanes of v into dst[0 .. 4), with constant indices (taking the vector's address, or indexing it
   by a loop counter, made GCC keep an accumulator on the stack inside the vector loop) */
#define FASTBP_LANES4(dst, v)                                                                                \
    do {                                                                                                     \
        (dst)[0] = (v)[0];                                                                                   \
        (dst)[1] = (v)[1];                                                                                   \
        (dst)[2] = (v)[2];                                                                                   \
        (dst)[3] = (v)[3];                                                                                   \
    } while (0)

/* The per-plane functions are inlined into the range functions' instruction-set clones (not inlined, they
   would run the baseline build's code) */
#if defined(__GNUC__)
#define FASTBP_PLANE_INLINE static inline __attribute__((always_inline))
#else
#define FASTBP_PLANE_INLINE static inline
#endif

/* bn_plane_grad_sums' step over values p .. p + 7: g0, g1 hold g' widened; x - mean from r */
#define FASTBP_GRAD_ACC8(SUF)                                                                                \
    do {                                                                                                     \
        FASTBP_LOAD4_##SUF(x0, r + p);                                                                       \
        FASTBP_LOAD4_##SUF(x1, r + p + 4);                                                                   \
        a0 += g0;                                                                                            \
        a1 += g1;                                                                                            \
        b0 += g0 * (x0 - M4);                                                                                \
        b1 += g1 * (x1 - M4);                                                                                \
    } while (0)

#define FASTBP_LANES_SUM(s) ((((s)[0] + (s)[4]) + ((s)[2] + (s)[6])) + (((s)[1] + (s)[5]) + ((s)[3] + (s)[7])))

#define FASTBP_NORM_FUNCS(SUF, REAL)                                                                          \
    /* One plane of L values (the plane path, csrc/norm.pyx): s[0] = sum of x - K, s[1] = sum of          \
       (x - K)^2, in the lanes and tree of bn_stats. */                                                   \
    FASTBP_PLANE_INLINE void bn_plane_stats_##SUF(const REAL* restrict r, ptrdiff_t L, double K,         \
                                                   double* restrict s)                                    \
    {                                                                                                     \
        fastbp_v4d a0 = {0, 0, 0, 0}, a1 = a0, q0 = a0, q1 = a0, d0, d1;                                  \
        const fastbp_v4d K4 = {K, K, K, K};                                                               \
        ptrdiff_t p, L8 = L / 8 * 8;                                                                   \
        for (p = 0; p < L8; p += 8) {                                                                     \
            FASTBP_LOAD4_##SUF(d0, r + p);                                                                \
            FASTBP_LOAD4_##SUF(d1, r + p + 4);                                                            \
            d0 -= K4;                                                                                     \
            d1 -= K4;                                                                                     \
            a0 += d0;                                                                                     \
            a1 += d1;                                                                                     \
            q0 += d0 * d0;                                                                                \
            q1 += d1 * d1;                                                                                \
        }                                                                                                 \
        /* the tail adds to lane 0 after the vector loop */                                               \
        double s1[8], s2[8];                                                                              \
        FASTBP_LANES4(s1, a0);                                                                            \
        FASTBP_LANES4(s1 + 4, a1);                                                                        \
        FASTBP_LANES4(s2, q0);                                                                            \
        FASTBP_LANES4(s2 + 4, q1);                                                                        \
        for (p = L8; p < L; p++) {                                                                        \
            double d = (double)r[p] - K;                                                                  \
            s1[0] += d;                                                                                   \
            s2[0] += d * d;                                                                               \
        }                                                                                                 \
        s[0] = FASTBP_LANES_SUM(s1);                                                                      \
        s[1] = FASTBP_LANES_SUM(s2);                                                                      \
    }                                                                                                     \
                                                                                                          \
    /* One plane: s[0] = sum of g, s[1] = sum of g (x - mean), in the lanes and tree of bn_grad_sums.     \
       With a mask m (not NULL), g is read as (m > 0 ? g : 0): relu_backward's rule for the output m. */  \
    FASTBP_PLANE_INLINE void bn_plane_grad_sums_##SUF(const REAL* restrict gr, const REAL* restrict r,   \
                                                       const REAL* restrict m, ptrdiff_t L, double mean,  \
                                                       double* restrict s)                                \
    {                                                                                                     \
        fastbp_v4d a0 = {0, 0, 0, 0}, a1 = a0, b0 = a0, b1 = a0, g0, g1, x0, x1;                          \
        const fastbp_v4d M4 = {mean, mean, mean, mean};                                                   \
        ptrdiff_t p, k, L8 = L / 8 * 8;                                                                \
        if (m == NULL)                                                                                    \
            for (p = 0; p < L8; p += 8) {                                                                 \
                FASTBP_LOAD4_##SUF(g0, gr + p);                                                           \
                FASTBP_LOAD4_##SUF(g1, gr + p + 4);                                                       \
                FASTBP_GRAD_ACC8(SUF);                                                                    \
            }                                                                                             \
        else /* g where m > 0, else +0, selected in REAL before widening (g read unconditionally, so     \
                the select is a blend, not a branch per element) */                                       \
            for (p = 0; p < L8; p += 8) {                                                                 \
                REAL gm[8];                                                                               \
                for (k = 0; k < 8; k++) {                                                                 \
                    REAL gv = gr[p + k];                                                                  \
                    gm[k] = m[p + k] > 0 ? gv : (REAL)0;                                                  \
                }                                                                                         \
                FASTBP_LOAD4_##SUF(g0, gm);                                                               \
                FASTBP_LOAD4_##SUF(g1, gm + 4);                                                           \
                FASTBP_GRAD_ACC8(SUF);                                                                    \
            }                                                                                             \
        double a[8], b[8];                                                                                \
        FASTBP_LANES4(a, a0);                                                                             \
        FASTBP_LANES4(a + 4, a1);                                                                         \
        FASTBP_LANES4(b, b0);                                                                             \
        FASTBP_LANES4(b + 4, b1);                                                                         \
        for (p = L8; p < L; p++) {                                                                        \
            double gv = (double)(m == NULL || m[p] > 0 ? gr[p] : (REAL)0);                                \
            a[0] += gv;                                                                                   \
            b[0] += gv * ((double)r[p] - mean);                                                           \
        }                                                                                                 \
        s[0] = FASTBP_LANES_SUM(a);                                                                       \
        s[1] = FASTBP_LANES_SUM(b);                                                                       \
    }                                                                                                     \
                                                                                                          \
    /* One plane: y = (x - m) * scale + shift; with relu_out (not NULL) also relu_out = relu(y) (y itself \
       is written only when y is not NULL). relu is r_relu's rule: 0 if y <= 0 else y (NaN kept). */      \
    FASTBP_PLANE_INLINE void bn_plane_apply_##SUF(const REAL* restrict r, REAL* restrict y,              \
                                                   REAL* restrict relu_out, ptrdiff_t L, REAL m,          \
                                                   REAL scale, REAL shift)                                \
    {                                                                                                     \
        ptrdiff_t p;                                                                                      \
        if (relu_out == NULL)                                                                             \
            for (p = 0; p < L; p++)                                                                       \
                y[p] = (r[p] - m) * scale + shift;                                                        \
        else if (y == NULL)                                                                               \
            for (p = 0; p < L; p++) {                                                                     \
                REAL v = (r[p] - m) * scale + shift;                                                      \
                relu_out[p] = v <= 0 ? (REAL)0 : v;                                                       \
            }                                                                                             \
        else                                                                                              \
            for (p = 0; p < L; p++) {                                                                     \
                REAL v = (r[p] - m) * scale + shift;                                                      \
                y[p] = v;                                                                                 \
                relu_out[p] = v <= 0 ? (REAL)0 : v;                                                       \
            }                                                                                             \
    }                                                                                                     \
                                                                                                          \
    /* One plane: dx = A g' + (B (x - m) + E), g' = g or, with a mask, (mask > 0 ? g : 0); dx = A g' when \
       the statistics are constants. */                                                                   \
    FASTBP_PLANE_INLINE void bn_plane_grad_apply_##SUF(const REAL* restrict gr, const REAL* restrict r,  \
                                                        const REAL* restrict mk, REAL* restrict o,        \
                                                        ptrdiff_t L, REAL m, REAL A, REAL B, REAL E,      \
                                                        int constant_stats)                               \
    {                                                                                                     \
        ptrdiff_t p;                                                                                      \
        if (mk == NULL) {                                                                                 \
            if (constant_stats)                                                                           \
                for (p = 0; p < L; p++)                                                                   \
                    o[p] = A * gr[p];                                                                     \
            else                                                                                          \
                for (p = 0; p < L; p++)                                                                   \
                    o[p] = A * gr[p] + (B * (r[p] - m) + E);                                              \
        } else {                                                                                          \
            /* gr[p] read unconditionally, so the select compiles to a blend, not a branch */             \
            if (constant_stats)                                                                           \
                for (p = 0; p < L; p++) {                                                                 \
                    REAL gv = gr[p];                                                                      \
                    o[p] = A * (mk[p] > 0 ? gv : (REAL)0);                                                \
                }                                                                                         \
            else                                                                                          \
                for (p = 0; p < L; p++) {                                                                 \
                    REAL gv = gr[p];                                                                      \
                    o[p] = A * (mk[p] > 0 ? gv : (REAL)0) + (B * (r[p] - m) + E);                         \
                }                                                                                         \
        }                                                                                                 \
    }

/* The plane path's loops (csrc/norm.pyx): planes p0 .. p1 - 1 of an (N, C, L) array (plane p = n C + c) per
   call, so that one call covers about a few thousand values whatever L is (one call per plane cost 50% on
   7x7 planes). The per-plane functions above are inlined into each instruction-set clone. */
#define FASTBP_NORM_RANGES(SUF, REAL)                                                                         \
    /* part[2 p], part[2 p + 1]: plane p's sums of x - K[c] and (x - K[c])^2 (K: the channels' shifts,    \
       norm.pyx) */                                                                                       \
    FASTBP_CLONES static void bn_planes_stats_##SUF(const REAL* restrict x, ptrdiff_t p0, ptrdiff_t p1,   \
                                                    ptrdiff_t C, ptrdiff_t L, const double* restrict K,   \
                                                    double* restrict part)                                \
    {                                                                                                     \
        for (ptrdiff_t p = p0; p < p1; p++)                                                               \
            bn_plane_stats_##SUF(x + p * L, L, K[p % C], part + 2 * p);                                   \
    }                                                                                                     \
                                                                                                          \
    /* part[2 p], part[2 p + 1]: plane p's sums of g' and g' (x - mean[c]) (g' = g, masked by mk) */      \
    FASTBP_CLONES static void bn_planes_grad_sums_##SUF(const REAL* restrict g, const REAL* restrict x,   \
                                                        const REAL* restrict mk, ptrdiff_t p0,            \
                                                        ptrdiff_t p1, ptrdiff_t C, ptrdiff_t L,           \
                                                        const double* restrict mean,                      \
                                                        double* restrict part)                            \
    {                                                                                                     \
        for (ptrdiff_t p = p0; p < p1; p++)                                                               \
            bn_plane_grad_sums_##SUF(g + p * L, x + p * L, mk ? mk + p * L : NULL, L, mean[p % C],        \
                                     part + 2 * p);                                                       \
    }                                                                                                     \
                                                                                                          \
    /* y (when not NULL) and relu(y) (when r is not NULL) of planes p0 .. p1 - 1: coef[c] is the channel's \
       scale, coef[C + c] its shift */                                                                    \
    FASTBP_CLONES static void bn_planes_apply_##SUF(const REAL* restrict x, REAL* restrict y,             \
                                                    REAL* restrict r, ptrdiff_t p0, ptrdiff_t p1,         \
                                                    ptrdiff_t C, ptrdiff_t L, const REAL* restrict mean,  \
                                                    const REAL* restrict coef)                            \
    {                                                                                                     \
        for (ptrdiff_t p = p0; p < p1; p++) {                                                             \
            const ptrdiff_t c = p % C;                                                                    \
            bn_plane_apply_##SUF(x + p * L, y ? y + p * L : NULL, r ? r + p * L : NULL, L, mean[c],       \
                                 coef[c], coef[C + c]);                                                   \
        }                                                                                                 \
    }                                                                                                     \
                                                                                                          \
    /* dx of planes p0 .. p1 - 1: coef[c], coef[C + c], coef[2 C + c] are the channel's A, B, E */         \
    FASTBP_CLONES static void bn_planes_grad_apply_##SUF(const REAL* restrict g, const REAL* restrict x,  \
                                                         const REAL* restrict mk, REAL* restrict dx,      \
                                                         ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t C,         \
                                                         ptrdiff_t L, const REAL* restrict mean,          \
                                                         const REAL* restrict coef, int constant_stats)   \
    {                                                                                                     \
        for (ptrdiff_t p = p0; p < p1; p++) {                                                             \
            const ptrdiff_t c = p % C;                                                                    \
            bn_plane_grad_apply_##SUF(g + p * L, x + p * L, mk ? mk + p * L : NULL, dx + p * L, L,        \
                                      mean[c], coef[c], coef[C + c], coef[2 * C + c], constant_stats);    \
        }                                                                                                 \
    }

FASTBP_NORM_FUNCS(f, float)
FASTBP_NORM_FUNCS(d, double)
FASTBP_NORM_RANGES(f, float)
FASTBP_NORM_RANGES(d, double)
#undef FASTBP_NORM_FUNCS
#undef FASTBP_NORM_RANGES

#endif
