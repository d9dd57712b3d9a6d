/* Body of csrc/winograd.h, included once per element type with REAL and WFN(name) defined.
   See winograd.h for the layout; each function handles one channel plane (or one row of it). */

/* One row of input pixels src[0 .. n) into a padded row of the transform's input, deinterleaved: padded
   column q (= q0 + the pixel's index) goes to dst[q / 2] if q is even, to dst[half + q / 2] if odd. */
FASTBP_CLONES
static void WFN(wino_pad_row)(const REAL* restrict src, ptrdiff_t n, ptrdiff_t q0, REAL* restrict dst,
                              ptrdiff_t half)
{
    REAL* restrict first = dst + (q0 % 2 ? half : 0) + q0 / 2;         /* where src[0], src[2], ... go */
    REAL* restrict second = dst + (q0 % 2 ? 0 : half) + (q0 + 1) / 2;  /* src[1], src[3], ... */
    ptrdiff_t k;
    for (k = 0; k < n / 2; k++) {
        first[k] = src[2 * k];
        second[k] = src[2 * k + 1];
    }
    if (n % 2)
        first[n / 2] = src[n - 1];
}

/* Input transform of R rows of tiles of one channel: xp holds the channel's zero-padded rows from the
   block's first (2 R + 2 rows of Wq = 2 TW + 2), each deinterleaved by wino_pad_row (even columns, then
   odd, TW + 1 each); V points at the channel's first tile of the block in plane 0 and the 16 planes are
   CT apart: V[(4 i + j) CT + th TW + tw] = (B^T d B)[i, j] for the 4x4 patch d at padded row 2 th, column
   2 tw. e: scratch, 4 Wq.   B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] */
FASTBP_CLONES
static void WFN(wino_in_plane)(const REAL* restrict xp, ptrdiff_t R, ptrdiff_t TW, REAL* restrict V,
                               ptrdiff_t CT, REAL* restrict e)
{
    const ptrdiff_t Wq = 2 * TW + 2, half = TW + 1;
    ptrdiff_t th, q, i, tw;
    for (th = 0; th < R; th++) {
        const REAL* restrict m0 = xp + 2 * th * Wq;
        const REAL* restrict m1 = m0 + Wq;
        const REAL* restrict m2 = m0 + 2 * Wq;
        const REAL* restrict m3 = m0 + 3 * Wq;
        REAL* restrict e0 = e;
        REAL* restrict e1 = e + Wq;
        REAL* restrict e2 = e + 2 * Wq;
        REAL* restrict e3 = e + 3 * Wq;
        for (q = 0; q < Wq; q++) {        /* e = B^T (rows 2 th .. 2 th + 3), elementwise over the row */
            e0[q] = m0[q] - m2[q];
            e1[q] = m1[q] + m2[q];
            e2[q] = m2[q] - m1[q];
            e3[q] = m1[q] - m3[q];
        }
        for (i = 0; i < 4; i++) {         /* v[i, :] = e_i B for every tile of the row */
            const REAL* restrict ev = e + i * Wq;     /* columns 0, 2, 4, ... */
            const REAL* restrict od = ev + half;      /* columns 1, 3, 5, ... */
            REAL* restrict v0 = V + 4 * i * CT + th * TW;
            REAL* restrict v1 = v0 + CT;
            REAL* restrict v2 = v0 + 2 * CT;
            REAL* restrict v3 = v0 + 3 * CT;
            for (tw = 0; tw < TW; tw++) {  /* tile columns 2 tw .. 2 tw + 3 */
                v0[tw] = ev[tw] - ev[tw + 1];
                v1[tw] = od[tw] + ev[tw + 1];
                v2[tw] = ev[tw + 1] - od[tw];
                v3[tw] = od[tw] - od[tw + 1];
            }
        }
    }
}

/* Output transform of R rows of tiles of one output channel: M points at its first tile of the block in
   product plane 0 (planes OT apart, rows of tiles TW apart); y at the block's first output row of the
   channel's (OH, OW) plane (OH counted from there): y[2 th + a, 2 tw + b] = (A^T m A)[a, b] + bias, parts
   past the edge dropped. r: scratch, 8 R TW.   A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] */
FASTBP_CLONES
static void WFN(wino_out_plane)(const REAL* restrict M, ptrdiff_t OT, ptrdiff_t R, ptrdiff_t TW,
                                REAL* restrict r, REAL* restrict y, ptrdiff_t OH, ptrdiff_t OW, REAL bias)
{
    const ptrdiff_t Tb = R * TW;
    ptrdiff_t th, i, t, tw, a;
    for (i = 0; i < 4; i++) {             /* r[i] = (A^T m)[0, i], r[4 + i] = (A^T m)[1, i], all tiles */
        const REAL* restrict p0 = M + i * OT;
        const REAL* restrict p1 = M + (4 + i) * OT;
        const REAL* restrict p2 = M + (8 + i) * OT;
        const REAL* restrict p3 = M + (12 + i) * OT;
        REAL* restrict r0 = r + i * Tb;
        REAL* restrict r1 = r + (4 + i) * Tb;
        for (t = 0; t < Tb; t++) {
            r0[t] = p0[t] + p1[t] + p2[t];
            r1[t] = p1[t] - p2[t] - p3[t];
        }
    }
    for (th = 0; th < R; th++) {
        for (a = 0; a < 2 && 2 * th + a < OH; a++) {
            const REAL* restrict s0 = r + 4 * a * Tb + th * TW;
            const REAL* restrict s1 = s0 + Tb;
            const REAL* restrict s2 = s0 + 2 * Tb;
            const REAL* restrict s3 = s0 + 3 * Tb;
            REAL* restrict yr = y + (2 * th + a) * OW;
            for (tw = 0; tw < OW / 2; tw++) {
                yr[2 * tw] = s0[tw] + s1[tw] + s2[tw] + bias;
                yr[2 * tw + 1] = s1[tw] - s2[tw] - s3[tw] + bias;
            }
            if (OW % 2) {
                tw = OW / 2;
                yr[2 * tw] = s0[tw] + s1[tw] + s2[tw] + bias;
            }
        }
    }
}

/* Row k of A g2 A^T for a row of tiles (wino_grad_plane): with (a0, a1) the tiles' first rows and (b0, b1)
   their second, (p, q) = (a0, a1), (a0 + b0, a1 + b1), (a0 - b0, a1 - b1) or (-b0, -b1) for k = 0 .. 3, and
   planes g, g + OT, g + 2 OT, g + 3 OT get p, p + q, p - q, -q. Always called with a constant k, so the
   branches fold away when it is inlined. */
static inline void WFN(wino_grad_row)(const REAL* restrict a0, const REAL* restrict a1, const REAL* restrict b0,
                                      const REAL* restrict b1, int k, ptrdiff_t TW, REAL* restrict g,
                                      ptrdiff_t OT)
{
    REAL* restrict g0 = g;
    REAL* restrict g1 = g + OT;
    REAL* restrict g2 = g + 2 * OT;
    REAL* restrict g3 = g + 3 * OT;
    ptrdiff_t tw;
    for (tw = 0; tw < TW; tw++) {
        REAL p, q;
        if (k == 0) { p = a0[tw]; q = a1[tw]; }
        else if (k == 1) { p = a0[tw] + b0[tw]; q = a1[tw] + b1[tw]; }
        else if (k == 2) { p = a0[tw] - b0[tw]; q = a1[tw] - b1[tw]; }
        else { p = -b0[tw]; q = -b1[tw]; }
        g0[tw] = p;
        g1[tw] = p + q;
        g2[tw] = p - q;
        g3[tw] = -q;
    }
}

/* Transform of one output channel's gradient go (OH, OW), zeros past the edge, into Gt (first tile of the
   channel in plane 0, planes OT apart): gt = A g A^T per 2x2 tile. s: scratch, 4 TW. */
FASTBP_CLONES
static void WFN(wino_grad_plane)(const REAL* restrict go, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t TH,
                                 ptrdiff_t TW, REAL* restrict Gt, ptrdiff_t OT, REAL* restrict s)
{
    REAL* restrict a0 = s;                /* row 2 th, even / odd columns */
    REAL* restrict a1 = s + TW;
    REAL* restrict b0 = s + 2 * TW;       /* row 2 th + 1 */
    REAL* restrict b1 = s + 3 * TW;
    ptrdiff_t th, tw, oh;
    for (tw = (OW + 1) / 2; tw < TW; tw++) {   /* tiles past the output's edge (the grid may be wider) */
        a0[tw] = 0;
        a1[tw] = 0;
        b0[tw] = 0;
        b1[tw] = 0;
    }
    for (th = 0; th < TH; th++) {
        oh = 2 * th;
        for (tw = 0; tw < OW / 2; tw++) {
            a0[tw] = go[oh * OW + 2 * tw];
            a1[tw] = go[oh * OW + 2 * tw + 1];
        }
        if (OW % 2) {
            a0[OW / 2] = go[oh * OW + OW - 1];
            a1[OW / 2] = 0;
        }
        if (oh + 1 < OH) {
            for (tw = 0; tw < OW / 2; tw++) {
                b0[tw] = go[(oh + 1) * OW + 2 * tw];
                b1[tw] = go[(oh + 1) * OW + 2 * tw + 1];
            }
            if (OW % 2) {
                b0[OW / 2] = go[(oh + 1) * OW + OW - 1];
                b1[OW / 2] = 0;
            }
        } else {
            for (tw = 0; tw < TW; tw++) {
                b0[tw] = 0;
                b1[tw] = 0;
            }
        }
        /* rows of A g2: (a, b), (a + c, b + d), (a - c, b - d), (-c, -d);
           each row (p, q) then becomes (p, p + q, p - q, -q): planes 4 k .. 4 k + 3 for row k */
        WFN(wino_grad_row)(a0, a1, b0, b1, 0, TW, Gt + th * TW, OT);
        WFN(wino_grad_row)(a0, a1, b0, b1, 1, TW, Gt + 4 * OT + th * TW, OT);
        WFN(wino_grad_row)(a0, a1, b0, b1, 2, TW, Gt + 8 * OT + th * TW, OT);
        WFN(wino_grad_row)(a0, a1, b0, b1, 3, TW, Gt + 12 * OT + th * TW, OT);
    }
}

/* One row of the padded plane back out of its deinterleaved storage (the inverse of wino_pad_row):
   dst[w] = padded column q0 + w, read from src[q / 2] (q even) or src[half + q / 2] (q odd). */
FASTBP_CLONES
static void WFN(wino_unpad_row)(const REAL* restrict src, ptrdiff_t n, ptrdiff_t q0, REAL* restrict dst,
                                ptrdiff_t half)
{
    const REAL* restrict first = src + (q0 % 2 ? half : 0) + q0 / 2;         /* dst[0], dst[2], ... */
    const REAL* restrict second = src + (q0 % 2 ? 0 : half) + (q0 + 1) / 2;  /* dst[1], dst[3], ... */
    ptrdiff_t k;
    for (k = 0; k < n / 2; k++) {
        dst[2 * k] = first[k];
        dst[2 * k + 1] = second[k];
    }
    if (n % 2)
        dst[n - 1] = first[n / 2];
}

/* Adjoint of wino_in_plane for one channel: the tiles of dV (V at the channel's first tile, planes CT
   apart) go back through B dv B^T and are added, overlapping, into xp ((2 TH + 2) rows of Wq, zeroed by
   the caller), whose rows are stored deinterleaved like the forward's (even columns, then odd: TW + 1
   each; wino_unpad_row reads them back). e: scratch, 4 Wq. */
FASTBP_CLONES
static void WFN(wino_in_adjoint_plane)(const REAL* restrict V, ptrdiff_t CT, ptrdiff_t TH, ptrdiff_t TW,
                                       REAL* restrict xp, REAL* restrict e)
{
    const ptrdiff_t Wq = 2 * TW + 2, half = TW + 1;
    ptrdiff_t th, i, tw, q;
    for (th = 0; th < TH; th++) {
        for (i = 0; i < 4; i++) {
            /* columns of patch row i: (t0, t1, t2, t3) = B^T-adjoint of (v0, v1, v2, v3):
               t0 = v0, t1 = v1 - v2 + v3, t2 = -v0 + v1 + v2, t3 = -v3; tiles overlap by two columns,
               so column 2 tw takes t0 of tile tw and t2 of tile tw - 1 (ev), column 2 tw + 1 t1 of tile
               tw and t3 of tile tw - 1 (od) */
            const REAL* restrict p0 = V + 4 * i * CT + th * TW;
            const REAL* restrict p1 = p0 + CT;
            const REAL* restrict p2 = p0 + 2 * CT;
            const REAL* restrict p3 = p0 + 3 * CT;
            REAL* restrict ev = e + i * Wq;
            REAL* restrict od = ev + half;
            ev[0] = p0[0];
            for (tw = 1; tw < TW; tw++)
                ev[tw] = p0[tw] + (-p0[tw - 1] + p1[tw - 1] + p2[tw - 1]);
            ev[TW] = -p0[TW - 1] + p1[TW - 1] + p2[TW - 1];
            od[0] = p1[0] - p2[0] + p3[0];
            for (tw = 1; tw < TW; tw++)
                od[tw] = (p1[tw] - p2[tw] + p3[tw]) - p3[tw - 1];
            od[TW] = -p3[TW - 1];
        }
        {   /* rows, the same combination, added into xp rows 2 th .. 2 th + 3 (overlapping the next row) */
            REAL* restrict x0 = xp + 2 * th * Wq;
            REAL* restrict x1 = x0 + Wq;
            REAL* restrict x2 = x0 + 2 * Wq;
            REAL* restrict x3 = x0 + 3 * Wq;
            const REAL* restrict e0 = e;
            const REAL* restrict e1 = e + Wq;
            const REAL* restrict e2 = e + 2 * Wq;
            const REAL* restrict e3 = e + 3 * Wq;
            for (q = 0; q < Wq; q++) {
                x0[q] += e0[q];
                x1[q] += e1[q] - e2[q] + e3[q];
                x2[q] += -e0[q] + e1[q] + e2[q];
                x3[q] += -e3[q];
            }
        }
    }
}
