"""Registry entries for csrc/conv.pyx.

Samples cover odd and rectangular inputs and kernels, batch 1, one channel, stride > 1, padding (also
wider than the kernel), dilation, 1x1 kernels (the path that skips im2col), a kernel exactly as large as
the padded input, and non-contiguous views. Most are small enough for per-element central differences in
the float64 gradient check. Outputs of fewer than 64 pixels use the batched GEMM layout, larger ones
("all_options", "per_sample_layout", ...) one GEMM per sample; with at least 8 input and output channels
a 3x3 kernel with stride 1 and dilation 1 uses Winograd when output pixels times channels reach 4096
(per_sample_layout: 196 x 16 does not), forward and
backward ("winograd_odd_pad1x0": 34x31 outputs, an odd width, four blocks of rows of tiles and a short
one in the forward), with at least 16 channels others the row layout in the forward
("per_sample_layout", "row_layout_all_options"); with stride 1 and no
padding ("wide_layout_...") the wide column layout. tests/test_conv_pool.py runs every shape of its own
through all the layouts and through chunked workspaces."""
import numpy as np

from . import Case, OpSpec, noncontig, randn

# (id, x shape, weight shape, params)
CONV_SHAPES = [
    ("n2_c3_5x6_k3x2", (2, 3, 5, 6), (4, 3, 3, 2), {}),
    ("batch1_c1_7x5_pad1", (1, 1, 7, 5), (2, 1, 3, 3), {"padding": 1}),
    ("stride2x3_pad1x2_rect", (2, 2, 9, 8), (3, 2, 3, 4), {"stride": (2, 3), "padding": (1, 2)}),
    ("dilation2x3_pad2x1", (1, 2, 9, 10), (2, 2, 2, 3), {"dilation": (2, 3), "padding": (2, 1)}),
    ("k1x1_direct", (2, 4, 5, 5), (3, 4, 1, 1), {}),
    ("k1x1_stride2", (2, 3, 5, 5), (2, 3, 1, 1), {"stride": 2}),
    ("pad3_wider_than_k2", (2, 1, 4, 4), (2, 1, 2, 2), {"padding": 3}),
    ("kernel_fills_padded_input", (1, 2, 3, 4), (2, 2, 5, 4), {"padding": (1, 0)}),
    ("stride3_gt_kernel2", (1, 2, 8, 7), (2, 2, 2, 2), {"stride": 3}),
    ("dilation2_same_pad2", (2, 2, 7, 6), (2, 2, 3, 3), {"dilation": 2, "padding": 2}),
    ("all_options", (3, 2, 11, 9), (4, 2, 3, 2), {"stride": (2, 1), "padding": (2, 1), "dilation": (1, 2)}),
    ("per_sample_layout", (2, 16, 14, 14), (32, 16, 3, 3), {"padding": 1}),
    ("wide_layout_k5", (2, 3, 14, 13), (4, 3, 5, 5), {}),
    ("wide_layout_dilation2x3", (1, 2, 13, 12), (3, 2, 3, 2), {"dilation": (2, 3)}),
    ("winograd_odd_pad1x0", (1, 16, 34, 33), (16, 16, 3, 3), {"padding": (1, 0)}),
    ("row_layout_all_options", (2, 16, 13, 11), (16, 16, 3, 2), {"stride": (2, 1), "padding": (1, 2),
                                                                 "dilation": (1, 2)}),
]


# Both entries run the same kernels, so they share one tolerance. Each output is a sum of products: C kH kW
# of them per forward output and dx element (up to 144 in the samples), N OH OW per dweight element (up to
# ~1100); float32 rounding grows with that length (~sqrt(length) ulps of the summed magnitudes, larger
# through Winograd's transforms, a few ulps more than the direct sum), which on values of magnitude ~10
# reaches a few 1e-5 absolute. float64: the same argument at 2^-52.
CONV_TOL = {np.dtype(np.float32): (2e-4, 5e-5), np.dtype(np.float64): (1e-9, 1e-11)}


def _conv_samples(rng, dt):
    cases = []
    for cid, xs, ws, params in CONV_SHAPES:
        x, w, b = randn(rng, xs, dt), randn(rng, ws, dt, 0.5), randn(rng, ws[0], dt)
        cases.append(Case(cid, (x, w, b), params))
    x, w, b = randn(rng, (2, 3, 6, 5), dt), randn(rng, (2, 3, 3, 3), dt), randn(rng, 2, dt)
    cases.append(Case("noncontig", (noncontig(x), noncontig(w), noncontig(b)), {"padding": 1}))
    return cases


def _conv_nobias_samples(rng, dt):
    return [Case("n2_c2_6x7_k3_s2", (randn(rng, (2, 2, 6, 7), dt), randn(rng, (3, 2, 3, 3), dt)),
                 {"stride": 2, "padding": 1}),
            Case("batch1_c1_5x5_k2x3", (randn(rng, (1, 1, 5, 5), dt), randn(rng, (1, 1, 2, 3), dt)), {}),
            Case("noncontig", (noncontig(randn(rng, (1, 2, 5, 4), dt)), noncontig(randn(rng, (2, 2, 2, 2), dt))),
                 {"dilation": 2, "padding": 1})]


SPECS = [
    OpSpec(
        name="conv2d",
        kernels=("conv2d_forward", "conv2d_backward"),
        forward=lambda B, x, w, b, **p: B.conv2d_forward(x, w, b, **p),
        backward=lambda B, g, out, x, w, b, **p: B.conv2d_backward(g, x, w, **p),
        samples=_conv_samples,
        diff_inputs=(0, 1, 2),
        tol=dict(CONV_TOL),
    ),
    OpSpec(
        name="conv2d_nobias",
        kernels=("conv2d_forward", "conv2d_backward"),
        forward=lambda B, x, w, **p: B.conv2d_forward(x, w, None, **p),
        backward=lambda B, g, out, x, w, **p: B.conv2d_backward(g, x, w, need_bias_grad=False, **p)[:2],
        samples=_conv_nobias_samples,
        diff_inputs=(0, 1),
        tol=dict(CONV_TOL),
    ),
]
