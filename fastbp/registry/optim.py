"""Registry entries for csrc/optim.pyx (kind "step": trajectories compared over repeated steps).

Each entry's settings cover every option of its kernel. The gradient fed at step t is the sample
gradient times a per-step factor that changes sign and magnitude (`_grad_at`), so momentum buffers see
sign flips, second-moment averages both grow and shrink, and the AMSGrad maximum actually differs from
the running average."""
import numpy as np

from . import Case, OpSpec, randn

STEP_TOL = {np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-12, 1e-13)}
SHAPES = [(1,), (7, 3)]
# 300000 elements cross the OpenMP threshold (PARALLEL_MIN); run there only the settings listed in each
# entry's `big` (those that switch on the most branches), which keeps the test suite fast.
BIG = (300000,)


def _grad_at(g, t):
    """The gradient used at step t (0-based): g scaled by 0.5 + 1.5 cos(0.9 t)."""
    return (g * g.dtype.type(0.5 + 1.5 * np.cos(0.9 * t))).astype(g.dtype)


def _draw(rng, shape, dt):
    """Normal samples; the large shape tiles a prime-length random block (the tests rebuild every sample
    for each test, and each element of a step is independent, so repeats lose no coverage)."""
    if shape != BIG:
        return randn(rng, shape, dt)
    return np.resize(randn(rng, (4099,), dt), shape)


def _samples(settings, n_state, big):
    def samples(rng, dt):
        cases = []
        for shape in SHAPES + [BIG]:
            for i, s in enumerate(settings):
                if shape == BIG and i not in big:
                    continue
                p, g = _draw(rng, shape, dt), _draw(rng, shape, dt)
                state = tuple(np.zeros_like(p) for _ in range(n_state))
                cases.append(Case(f"{'x'.join(map(str, shape))}_cfg{i}", (p, g) + state, dict(s)))
        return cases
    return samples


# ----- SGD -----------------------------------------------------------------------------------------
SGD_SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.02, momentum=0.5, nesterov=True, weight_decay=0.05),
]


def _sgd_forward(B, p, g, buf, step_index=0, lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    B.sgd_step(p, _grad_at(g, step_index), buf if momentum else None, lr, momentum, dampening, weight_decay,
               nesterov, step_index == 0)


# ----- AdaGrad ---------------------------------------------------------------------------------------
ADAGRAD_SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.1, lr_decay=0.05),
    dict(lr=0.05, weight_decay=0.1, eps=1e-6),
    dict(lr=0.1, lr_decay=0.01, weight_decay=0.02, initial_accumulator_value=0.5),
]


def _adagrad_forward(B, p, g, state_sum, step_index=0, lr=0.01, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
                     initial_accumulator_value=0.0):
    if step_index == 0:
        state_sum[...] = initial_accumulator_value  # what the optimizer class does when it creates state
    B.adagrad_step(p, _grad_at(g, step_index), state_sum, step_index + 1, lr, lr_decay, weight_decay, eps)


# ----- RMSProp -------------------------------------------------------------------------------------
RMSPROP_SETTINGS = [
    dict(lr=0.01),
    dict(lr=0.01, alpha=0.9, eps=1e-6),
    dict(lr=0.01, momentum=0.9),
    dict(lr=0.01, centered=True),
    dict(lr=0.005, alpha=0.95, momentum=0.8, centered=True, weight_decay=0.05),
    dict(lr=0.01, weight_decay=0.1),
]


def _rmsprop_forward(B, p, g, square_avg, grad_avg, buf, step_index=0, lr=0.01, alpha=0.99, eps=1e-8,
                     weight_decay=0.0, momentum=0.0, centered=False):
    B.rmsprop_step(p, _grad_at(g, step_index), square_avg, grad_avg if centered else None,
                   buf if momentum > 0 else None, lr, alpha, eps, weight_decay, momentum, centered)


# ----- Adam / AdamW ---------------------------------------------------------------------------------
ADAM_SETTINGS = [
    dict(lr=1e-2),
    dict(lr=1e-2, amsgrad=True),
    dict(lr=5e-3, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.05),
    dict(lr=1e-2, weight_decay=0.1, amsgrad=True),
    dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    dict(lr=1e-2, beta1=0.0, beta2=0.5, weight_decay=0.01, amsgrad=True, decoupled_weight_decay=True),
]


def _adam_forward(B, p, g, m, v, vmax, step_index=0, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                  amsgrad=False, decoupled_weight_decay=False):
    B.adam_step(p, _grad_at(g, step_index), m, v, vmax if amsgrad else None, step_index + 1, lr, beta1, beta2, eps,
                weight_decay, amsgrad, decoupled_weight_decay)


# ----- Adadelta ------------------------------------------------------------------------------------
ADADELTA_SETTINGS = [
    dict(lr=1.0),
    dict(lr=0.5, rho=0.95, eps=1e-5),
    dict(lr=1.0, weight_decay=0.1),
    dict(lr=0.1, rho=0.0, eps=1e-4, weight_decay=0.02),
]


def _adadelta_forward(B, p, g, square_avg, acc_delta, step_index=0, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    B.adadelta_step(p, _grad_at(g, step_index), square_avg, acc_delta, lr, rho, eps, weight_decay)


SPECS = [
    OpSpec(name="sgd_step", kernels=("sgd_step",), kind="step", forward=_sgd_forward,
           samples=_samples(SGD_SETTINGS, 1, (3, 5)), mutates=(0, 2), tol=dict(STEP_TOL)),
    OpSpec(name="adagrad_step", kernels=("adagrad_step",), kind="step", forward=_adagrad_forward,
           samples=_samples(ADAGRAD_SETTINGS, 1, (0, 3)), mutates=(0, 2), tol=dict(STEP_TOL)),
    OpSpec(name="rmsprop_step", kernels=("rmsprop_step",), kind="step", forward=_rmsprop_forward,
           samples=_samples(RMSPROP_SETTINGS, 3, (2, 4)), mutates=(0, 2, 3, 4), tol=dict(STEP_TOL)),
    OpSpec(name="adam_step", kernels=("adam_step",), kind="step", forward=_adam_forward,
           samples=_samples(ADAM_SETTINGS, 3, (3, 5)), mutates=(0, 2, 3, 4), tol=dict(STEP_TOL)),
    OpSpec(name="adadelta_step", kernels=("adadelta_step",), kind="step", forward=_adadelta_forward,
           samples=_samples(ADADELTA_SETTINGS, 2, (2, 3)), mutates=(0, 2, 3), tol=dict(STEP_TOL)),
]
