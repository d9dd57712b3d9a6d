"""Registry entries for csrc/pool.pyx.

Max-pool samples hold distinct values (a shuffled grid 0.05 apart), so no window has a tie and the float64
gradient check never steps across a change of argmax; the tie rule has its own test in
tests/test_conv_pool.py. The registry's forward returns y only (its tests expect float outputs); backward
recomputes the int64 indices with the same backend, so compiled and reference indices are compared through
the gradients they route."""
import numpy as np

from . import Case, OpSpec, noncontig, randn


def distinct(rng, shape, dt):
    """Values 0.05 apart in random order: no ties anywhere."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * 0.05).reshape(shape).astype(dt)


# (id, x shape, params)
MAX_SHAPES = [
    ("k2_n2_c3_6x6", (2, 3, 6, 6), {"kernel_size": 2}),
    ("batch1_c1_7x5_k3_s2_pad1", (1, 1, 7, 5), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("rect_k3x2_s2x1_pad1", (2, 2, 9, 8), {"kernel_size": (3, 2), "stride": (2, 1), "padding": 1}),
    ("dilation2_k2_pad1", (1, 2, 7, 9), {"kernel_size": 2, "dilation": 2, "padding": 1}),
    ("overlap_k3_s1", (1, 2, 5, 5), {"kernel_size": 3, "stride": 1}),
    ("odd_7x7_k2_floor", (2, 1, 7, 7), {"kernel_size": 2}),
    ("k2_n4_c8_16x16", (4, 8, 16, 16), {"kernel_size": 2}),
]

AVG_SHAPES = [
    ("k2_n2_c3_6x6", (2, 3, 6, 6), {"kernel_size": 2}),
    ("batch1_c1_7x5_k3_s2_pad1", (1, 1, 7, 5), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("rect_k3x2_s2x1_pad1", (2, 2, 9, 8), {"kernel_size": (3, 2), "stride": (2, 1), "padding": 1}),
    ("overlap_k3_s1_pad1", (1, 2, 5, 5), {"kernel_size": 3, "stride": 1, "padding": 1}),
    ("odd_7x7_k2_floor", (2, 1, 7, 7), {"kernel_size": 2}),
    ("k2_n4_c8_16x16", (4, 8, 16, 16), {"kernel_size": 2}),
]


def _max_samples(rng, dt):
    cases = [Case(cid, (distinct(rng, s, dt),), p) for cid, s, p in MAX_SHAPES]
    cases.append(Case("noncontig", (noncontig(distinct(rng, (2, 2, 6, 5), dt)),), {"kernel_size": 2, "stride": 1}))
    return cases


def _avg_samples(rng, dt):
    cases = [Case(cid, (randn(rng, s, dt),), p) for cid, s, p in AVG_SHAPES]
    cases.append(Case("noncontig", (noncontig(randn(rng, (2, 2, 6, 5), dt)),), {"kernel_size": 2}))
    return cases


def _gap_samples(rng, dt):
    cases = [Case("x".join(map(str, s)), (randn(rng, s, dt),)) for s in [(2, 3, 5, 7), (1, 1, 1, 1), (3, 2, 4, 4)]]
    cases.append(Case("noncontig", (noncontig(randn(rng, (2, 3, 4, 3), dt)),)))
    return cases


SPECS = [
    OpSpec(
        name="max_pool2d",
        kernels=("max_pool2d_forward", "max_pool2d_backward"),
        forward=lambda B, x, **p: B.max_pool2d_forward(x, **p)[0],
        backward=lambda B, g, out, x, **p: (B.max_pool2d_backward(g, B.max_pool2d_forward(x, **p)[1], x.shape),),
        samples=_max_samples,
    ),
    OpSpec(
        name="avg_pool2d",
        kernels=("avg_pool2d_forward", "avg_pool2d_backward"),
        forward=lambda B, x, **p: B.avg_pool2d_forward(x, **p),
        backward=lambda B, g, out, x, **p: (B.avg_pool2d_backward(g, x.shape, **p),),
        samples=_avg_samples,
    ),
    OpSpec(
        name="global_avg_pool2d",
        kernels=("global_avg_pool2d_forward", "global_avg_pool2d_backward"),
        forward=lambda B, x: B.global_avg_pool2d_forward(x),
        backward=lambda B, g, out, x: (B.global_avg_pool2d_backward(g, x.shape),),
        samples=_gap_samples,
    ),
]
