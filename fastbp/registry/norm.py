"""Registry entries for csrc/norm.pyx.

batch_norm_train returns (y, save_mean, save_invstd, running_mean, running_var) from copies of the running
statistics, so the forward test compares the in-place running-stat update too; its gradients are those of
y with respect to x, weight and bias through the batch statistics. batch_norm_eval uses the running
statistics (constants). batch_norm_noaffine has no weight or bias. batch_norm_relu_train / _eval are
relu(batch_norm(x)) through the fused forms (activation="relu" forward, relu_output= backward) that captured
steps use. Samples: (N, C), (N, C, L) and (N, C, H, W) shapes, odd sizes, a batch of 2, non-contiguous
inputs, a mean far from zero, and one input above PARALLEL_MIN elements (the OpenMP branch). Dropout's mask
is fixed in the sample (as the Python layer draws it) and shaped like the input or like its leading (N, C)
dimensions (channel-wise)."""
import numpy as np

from . import Case, OpSpec, noncontig, randn

BIG = (4, 8, 96, 96)  # 294912 elements > PARALLEL_MIN


def _bn_inputs(rng, shape, dt, offset=0.0, scale=1.0):
    c = shape[1]
    x = (randn(rng, shape, dt, scale) + dt.type(offset)).astype(dt)
    w = (1 + 0.5 * rng.standard_normal(c)).astype(dt)
    b = randn(rng, (c,), dt)
    rm = randn(rng, (c,), dt)
    rv = (0.5 + rng.random(c)).astype(dt)
    return x, w, b, rm, rv


BN_SHAPES = [("n4_c3", (4, 3), {}), ("n2_c5_l7", (2, 5, 7), {}), ("n3_c4_5x6", (3, 4, 5, 6), {}),
             ("n1_c2_3x3", (1, 2, 3, 3), {}), ("n2_c1_1x1", (2, 1, 1, 1), {}),
             ("n5_c3_4x4_eps_mom", (5, 3, 4, 4), {"eps": 1e-3, "momentum": 0.3}),
             ("n6_c2_8x8_offset", (6, 2, 8, 8), {"offset": 20.0})]


def _bn_samples(noaffine=False):
    def samples(rng, dt):
        cases = []
        for cid, shape, p in BN_SHAPES + [("big", BIG, {})]:
            p = dict(p)
            x, w, b, rm, rv = _bn_inputs(rng, shape, dt, p.pop("offset", 0.0))
            inputs = (x,) if noaffine else (x, w, b, rm, rv)
            cases.append(Case(cid, inputs, p, gradcheck=shape != BIG))
        x, w, b, rm, rv = _bn_inputs(rng, (3, 4, 5, 3), dt)
        nc = (noncontig(x),) if noaffine else (noncontig(x), noncontig(w), noncontig(b), rm, rv)
        cases.append(Case("noncontig", nc, {}))
        return cases
    return samples


def _train_forward(B, x, w, b, rm, rv, momentum=0.1, eps=1e-5):
    rm, rv = rm.copy(), rv.copy()
    y, mean, invstd = B.batch_norm_forward(x, w, b, rm, rv, True, momentum, eps)
    return y, mean, invstd, rm, rv


def _train_backward(B, g, out, x, w, b, rm, rv, momentum=0.1, eps=1e-5):
    _, mean, invstd = B.batch_norm_forward(x, w, b, None, None, True, momentum, eps)
    return B.batch_norm_backward(g, x, w, mean, invstd, True)


def _eval_forward(B, x, w, b, rm, rv, momentum=0.1, eps=1e-5):
    return B.batch_norm_forward(x, w, b, rm, rv, False, momentum, eps)


def _eval_backward(B, g, out, x, w, b, rm, rv, momentum=0.1, eps=1e-5):
    _, mean, invstd = B.batch_norm_forward(x, w, b, rm, rv, False, momentum, eps)
    return B.batch_norm_backward(g, x, w, mean, invstd, False)


def _noaffine_forward(B, x, momentum=0.1, eps=1e-5):
    return B.batch_norm_forward(x, None, None, None, None, True, momentum, eps)


def _noaffine_backward(B, g, out, x, momentum=0.1, eps=1e-5):
    _, mean, invstd = B.batch_norm_forward(x, None, None, None, None, True, momentum, eps)
    dx, dw, db = B.batch_norm_backward(g, x, None, mean, invstd, True)
    assert dw is None and db is None
    return (dx,)


def _relu_train_forward(B, x, w, b, rm, rv, momentum=0.1, eps=1e-5):
    return B.batch_norm_forward(x, w, b, None, None, True, momentum, eps, activation="relu")[3]


def _relu_train_backward(B, g, out, x, w, b, rm, rv, momentum=0.1, eps=1e-5):
    _, mean, invstd, r = B.batch_norm_forward(x, w, b, None, None, True, momentum, eps, activation="relu")
    return B.batch_norm_backward(g, x, w, mean, invstd, True, relu_output=r)


def _relu_eval_forward(B, x, w, b, rm, rv, momentum=0.1, eps=1e-5):
    return B.batch_norm_forward(x, w, b, rm, rv, False, momentum, eps, activation="relu")[3]


def _relu_eval_backward(B, g, out, x, w, b, rm, rv, momentum=0.1, eps=1e-5):
    _, mean, invstd, r = B.batch_norm_forward(x, w, b, rm, rv, False, momentum, eps, activation="relu")
    return B.batch_norm_backward(g, x, w, mean, invstd, False, relu_output=r)


def _dropout_samples(rng, dt):
    cases = []
    for cid, shape, mdims, p in [("elementwise_7x5", (7, 5), 2, 0.3), ("elementwise_3x4x5x2", (3, 4, 5, 2), 4, 0.5),
                                 ("channelwise_2x3x4x5", (2, 3, 4, 5), 2, 0.5), ("scalar_shape_1", (1,), 1, 0.0),
                                 ("elementwise_big", (300001,), 1, 0.25), ("channelwise_big", (8, 16, 48, 48), 2, 0.5)]:
        x = randn(rng, shape, dt)
        mask = rng.random(shape[:mdims]) >= p
        cases.append(Case(cid, (x, mask), {"scale": 1.0 / (1.0 - p)}, gradcheck=x.size < 1000))
    x = randn(rng, (4, 6), dt)
    cases.append(Case("noncontig", (noncontig(x), noncontig(rng.random((4, 6)) >= 0.5)), {"scale": 2.0}))
    return cases


def _bn_spec(name, forward, backward):
    return OpSpec(name=name, kernels=("batch_norm_forward", "batch_norm_backward"), forward=forward,
                  backward=backward, samples=_bn_samples(), diff_inputs=(0, 1, 2))


SPECS = [
    _bn_spec("batch_norm_train", _train_forward, _train_backward),
    _bn_spec("batch_norm_eval", _eval_forward, _eval_backward),
    # a BatchNorm followed by a ReLU as one kernel call each way, as captured steps run it: the forward
    # writes relu(y) in the pass that computes y, the backward applies the ReLU's mask as it reads grad_out
    _bn_spec("batch_norm_relu_train", _relu_train_forward, _relu_train_backward),
    _bn_spec("batch_norm_relu_eval", _relu_eval_forward, _relu_eval_backward),
    OpSpec(
        name="batch_norm_noaffine",
        kernels=("batch_norm_forward", "batch_norm_backward"),
        forward=_noaffine_forward,
        backward=_noaffine_backward,
        samples=_bn_samples(noaffine=True),
    ),
    OpSpec(
        name="dropout_mask_scale",
        kernels=("dropout_mask_scale",),
        forward=lambda B, x, mask, scale: B.dropout_mask_scale(x, mask, scale),
        backward=lambda B, g, out, x, mask, scale: (B.dropout_mask_scale(g, mask, scale),),
        samples=_dropout_samples,
    ),
]
