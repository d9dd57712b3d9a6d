"""Registry entries for csrc/gemm.pyx."""

from . import Case, OpSpec, noncontig, randn, transposed

LINEAR_SHAPES = [(1, 1, 1), (1, 7, 3), (5, 3, 4), (17, 33, 9), (64, 12, 1)]


def _linear_samples(rng, dt):
    cases = []
    for n, fin, fout in LINEAR_SHAPES:
        x, w, b = randn(rng, (n, fin), dt), randn(rng, (fout, fin), dt), randn(rng, fout, dt)
        cases.append(Case(f"n{n}_in{fin}_out{fout}", (x, w, b)))
    x, w, b = randn(rng, (6, 5), dt), randn(rng, (4, 5), dt), randn(rng, 4, dt)
    cases.append(Case("noncontig", (noncontig(x), noncontig(w), noncontig(b))))
    cases.append(Case("fortran_x", (transposed(x), w, b)))
    return cases


def _linear_nobias_samples(rng, dt):
    return [Case("n3_in5_out2", (randn(rng, (3, 5), dt), randn(rng, (2, 5), dt))),
            Case("n1_in9_out4", (randn(rng, (1, 9), dt), randn(rng, (4, 9), dt)))]


def _mm_samples(rng, dt):
    cases = []
    for m, k, n in [(1, 1, 1), (3, 5, 2), (16, 7, 33), (1, 40, 3)]:
        for ta in (False, True):
            for tb in (False, True):
                a = randn(rng, (k, m) if ta else (m, k), dt)
                b = randn(rng, (n, k) if tb else (k, n), dt)
                cases.append(Case(f"m{m}k{k}n{n}_ta{int(ta)}_tb{int(tb)}", (a, b),
                                  {"trans_a": ta, "trans_b": tb}))
    a, b = randn(rng, (4, 6), dt), randn(rng, (6, 3), dt)
    cases.append(Case("noncontig", (noncontig(a), noncontig(b))))
    cases.append(Case("fortran", (transposed(a), transposed(b))))
    return cases


def _mm_backward(B, g, out, a, b, trans_a=False, trans_b=False):
    # C = op(a) op(b):  d op(a) = g op(b)^T,  d op(b) = op(a)^T g, transposed back where op transposes
    ga = B.matmul(b, g, trans_a=trans_b, trans_b=True) if trans_a else B.matmul(g, b, trans_b=not trans_b)
    gb = B.matmul(g, a, trans_a=True, trans_b=trans_a) if trans_b else B.matmul(a, g, trans_a=not trans_a)
    return ga, gb


SPECS = [
    OpSpec(
        name="linear",
        kernels=("linear_forward", "linear_backward"),
        forward=lambda B, x, w, b: B.linear_forward(x, w, b),
        backward=lambda B, g, out, x, w, b: B.linear_backward(g, x, w, True, True, True),
        samples=_linear_samples,
        diff_inputs=(0, 1, 2),
    ),
    OpSpec(
        # a Linear followed by a ReLU as one kernel call (the ReLU in the product's epilogue), as captured
        # steps run it; the backward is the two kernels' (relu_backward on the pre-activation, then linear;
        # relu_backward is verified by the relu entry, so the kernels named are linear's and so is the tolerance)
        name="linear_relu",
        kernels=("linear_forward", "linear_backward"),
        forward=lambda B, x, w, b: B.linear_forward(x, w, b, activation="relu")[1],
        backward=lambda B, g, out, x, w, b: B.linear_backward(B.relu_backward(g, B.linear_forward(x, w, b)), x, w,
                                                              True, True, True),
        samples=_linear_samples,
        diff_inputs=(0, 1, 2),
    ),
    OpSpec(
        name="linear_nobias",
        kernels=("linear_forward", "linear_backward"),
        forward=lambda B, x, w: B.linear_forward(x, w, None),
        backward=lambda B, g, out, x, w: B.linear_backward(g, x, w, True, True, False)[:2],
        samples=_linear_nobias_samples,
        diff_inputs=(0, 1),
    ),
    OpSpec(
        name="matmul",
        kernels=("matmul",),
        forward=lambda B, a, b, trans_a=False, trans_b=False: B.matmul(a, b, trans_a, trans_b),
        backward=_mm_backward,
        samples=_mm_samples,
        diff_inputs=(0, 1),
    ),
]
