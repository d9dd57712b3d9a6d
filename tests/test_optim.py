"""Optimizers, L-BFGS, gradient clipping, learning-rate schedules and initialisation.

The optimizer checks train a tiny MLP with fastbp and, side by side, with PyTorch's update rules written
out here in plain NumPy from the algorithm boxes of PyTorch's documentation (a second implementation,
independent of fastbp.reference and of the kernels), with the network's gradients also written out by
hand. PyTorch itself, when installed, is an extra comparison, never the only one."""
import copy
import math

import numpy as np
import pytest

import fastbp
from fastbp import nn, optim, tensor
from fastbp.nn import init
from fastbp.nn.utils import clip_grad_norm_, clip_grad_value_
from fastbp.optim import lr_scheduler as sched
from fastbp.optim.lbfgs import cubic_minimizer, strong_wolfe, two_loop_direction


# ----- PyTorch's documented update rules, written out plainly (per parameter, t = 1, 2, ...) ----------
def textbook_sgd(theta, g, st, t, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    if weight_decay != 0:
        g = g + weight_decay * theta
    if momentum != 0:
        if t > 1:
            st["b"] = momentum * st["b"] + (1 - dampening) * g
        else:
            st["b"] = g
        g = g + momentum * st["b"] if nesterov else st["b"]
    return theta - lr * g


def textbook_adagrad(theta, g, st, t, lr, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
    if t == 1:
        st["sum"] = np.full_like(theta, initial_accumulator_value)
    lr_t = lr / (1 + (t - 1) * lr_decay)
    if weight_decay != 0:
        g = g + weight_decay * theta
    st["sum"] = st["sum"] + g ** 2
    return theta - lr_t * g / (np.sqrt(st["sum"]) + eps)


def textbook_rmsprop(theta, g, st, t, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
    if t == 1:
        st.update(v=np.zeros_like(theta), g_ave=np.zeros_like(theta), b=np.zeros_like(theta))
    if weight_decay != 0:
        g = g + weight_decay * theta
    st["v"] = alpha * st["v"] + (1 - alpha) * g ** 2
    v_tilde = st["v"]
    if centered:
        st["g_ave"] = st["g_ave"] * alpha + (1 - alpha) * g
        v_tilde = v_tilde - st["g_ave"] ** 2
    if momentum > 0:
        st["b"] = momentum * st["b"] + g / (np.sqrt(v_tilde) + eps)
        return theta - lr * st["b"]
    return theta - lr * g / (np.sqrt(v_tilde) + eps)


def textbook_adam(theta, g, st, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                  decoupled=False):
    b1, b2 = betas
    if t == 1:
        st.update(m=np.zeros_like(theta), v=np.zeros_like(theta), v_max=np.zeros_like(theta))
    if weight_decay != 0:
        if decoupled:
            theta = theta - lr * weight_decay * theta
        else:
            g = g + weight_decay * theta
    st["m"] = b1 * st["m"] + (1 - b1) * g
    st["v"] = b2 * st["v"] + (1 - b2) * g ** 2
    m_hat = st["m"] / (1 - b1 ** t)
    if amsgrad:
        st["v_max"] = np.maximum(st["v_max"], st["v"])
        v_hat = st["v_max"] / (1 - b2 ** t)
    else:
        v_hat = st["v"] / (1 - b2 ** t)
    return theta - lr * m_hat / (np.sqrt(v_hat) + eps)


def textbook_adamw(theta, g, st, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
    return textbook_adam(theta, g, st, t, lr, betas, eps, weight_decay, amsgrad, decoupled=True)


def textbook_adadelta(theta, g, st, t, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    if t == 1:
        st.update(v=np.zeros_like(theta), u=np.zeros_like(theta))
    if weight_decay != 0:
        g = g + weight_decay * theta
    st["v"] = st["v"] * rho + g ** 2 * (1 - rho)
    dx = np.sqrt(st["u"] + eps) / np.sqrt(st["v"] + eps) * g
    st["u"] = st["u"] * rho + dx ** 2 * (1 - rho)
    return theta - lr * dx


CONFIGS = [
    ("SGD", optim.SGD, textbook_sgd, dict(lr=0.1)),
    ("SGD-nesterov-wd", optim.SGD, textbook_sgd, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("SGD-dampening", optim.SGD, textbook_sgd, dict(lr=0.05, momentum=0.9, dampening=0.1)),
    ("Adagrad", optim.Adagrad, textbook_adagrad, dict(lr=0.1)),
    ("Adagrad-all", optim.Adagrad, textbook_adagrad,
     dict(lr=0.1, lr_decay=0.01, weight_decay=1e-3, initial_accumulator_value=0.1, eps=1e-8)),
    ("RMSprop", optim.RMSprop, textbook_rmsprop, dict(lr=0.01)),
    ("RMSprop-momentum", optim.RMSprop, textbook_rmsprop, dict(lr=0.01, momentum=0.5)),
    ("RMSprop-centered", optim.RMSprop, textbook_rmsprop, dict(lr=0.01, centered=True)),
    ("RMSprop-all", optim.RMSprop, textbook_rmsprop,
     dict(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.9, centered=True, weight_decay=1e-3)),
    ("Adadelta", optim.Adadelta, textbook_adadelta, dict()),
    ("Adadelta-all", optim.Adadelta, textbook_adadelta, dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=1e-2)),
    ("Adam", optim.Adam, textbook_adam, dict(lr=0.01)),
    ("Adam-amsgrad-wd", optim.Adam, textbook_adam,
     dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2, amsgrad=True)),
    ("AdamW", optim.AdamW, textbook_adamw, dict(lr=0.01)),
    ("AdamW-amsgrad", optim.AdamW, textbook_adamw, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]
CONFIG_IDS = [c[0] for c in CONFIGS]


# ----- the small problem: a 5-8-3 tanh MLP with softmax cross-entropy on fixed data --------------------
def _data():
    rng = np.random.default_rng(42)
    X = rng.standard_normal((24, 5))
    y = rng.integers(0, 3, 24)
    return X, y


def _model(seed=0, dtype=np.float64):
    fastbp.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _fastbp_loss(model, X, y):
    return nn.CrossEntropyLoss()(model(tensor(X)), y)


def _textbook_loss_and_grads(params, X, y):
    """Loss and gradients of the same MLP, derived by hand (params = [W1, b1, W2, b2])."""
    W1, b1, W2, b2 = params
    n = len(X)
    h = np.tanh(X @ W1.T + b1)
    z = h @ W2.T + b2
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(n), y]))
    dz = p.copy()
    dz[np.arange(n), y] -= 1
    dz /= n
    dh = dz @ W2
    da = dh * (1 - h ** 2)
    return loss, [da.T @ X, da.sum(axis=0), dz.T @ h, dz.sum(axis=0)]


def _train_fastbp(model, opt, X, y, steps):
    losses, traj = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = _fastbp_loss(model, X, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        traj.append([p.data.copy() for p in model.parameters()])
    return losses, traj


@pytest.mark.parametrize("name,cls,rule,kw", CONFIGS, ids=CONFIG_IDS)
def test_training_matches_textbook_rule(name, cls, rule, kw):
    X, y = _data()
    model = _model()
    params = [p.data.copy() for p in model.parameters()]
    losses, traj = _train_fastbp(model, cls(model.parameters(), **kw), X, y, steps=25)
    states = [dict() for _ in params]
    for t in range(1, 26):
        loss, grads = _textbook_loss_and_grads(params, X, y)
        params = [rule(p, g, st, t, **kw) for p, g, st in zip(params, grads, states)]
        assert losses[t - 1] == pytest.approx(loss, rel=1e-10), f"{name}: loss at step {t}"
        for k, (a, b) in enumerate(zip(traj[t - 1], params)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"{name}: parameter {k} after step {t}")
    assert losses[-1] < losses[0], f"{name} did not reduce the loss"


def test_param_groups_use_their_own_hyperparameters():
    X, y = _data()
    model = _model()
    W1, b1, W2, b2 = list(model.parameters())
    opt = optim.Adam([{"params": [W1, b1], "lr": 0.03, "amsgrad": True}, {"params": [W2, b2]}], lr=0.01,
                     weight_decay=1e-3)
    params = [p.data.copy() for p in model.parameters()]
    _, traj = _train_fastbp(model, opt, X, y, steps=10)
    states = [dict() for _ in params]
    hp = [dict(lr=0.03, amsgrad=True, weight_decay=1e-3)] * 2 + [dict(lr=0.01, weight_decay=1e-3)] * 2
    for t in range(1, 11):
        _, grads = _textbook_loss_and_grads(params, X, y)
        params = [textbook_adam(p, g, st, t, **h) for p, g, st, h in zip(params, grads, states, hp)]
    for a, b in zip(traj[-1], params):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_adam_decoupled_flag_is_adamw():
    X, y = _data()
    ma, mb = _model(), _model()
    _, ta = _train_fastbp(ma, optim.Adam(ma.parameters(), lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
                          X, y, 8)
    _, tb = _train_fastbp(mb, optim.AdamW(mb.parameters(), lr=0.01, weight_decay=0.1), X, y, 8)
    for a, b in zip(ta[-1], tb[-1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name,cls,rule,kw", CONFIGS, ids=CONFIG_IDS)
def test_compiled_and_reference_backends_train_alike(name, cls, rule, kw):
    X, y = _data()
    runs = []
    for backend in ("compiled", "reference"):
        with fastbp.backend(backend):
            model = _model(dtype=np.float32)
            runs.append(_train_fastbp(model, cls(model.parameters(), **kw), X.astype(np.float32), y, 15))
    (lc, tc), (lr_, tr) = runs
    np.testing.assert_allclose(lc, lr_, rtol=1e-5)
    for a, b in zip(tc[-1], tr[-1]):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_parameters_without_grad_are_skipped():
    a, b = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = np.array([1.0, -1.0, 0.5])
    opt.step()
    np.testing.assert_array_equal(b.data, np.ones(2))
    assert not np.array_equal(a.data, np.ones(3))
    assert opt.state_dict()["state"].keys() == {0}


def test_step_returns_closure_loss():
    p = nn.Parameter(np.array([3.0]))

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    for cls in (optim.SGD, optim.Adadelta, optim.Adagrad, optim.RMSprop, optim.Adam, optim.AdamW):
        opt = cls([p], lr=0.1)
        before = float(p.data[0])
        out = opt.step(closure)
        assert out.item() == pytest.approx(before ** 2)
        assert abs(p.data[0]) < abs(before)


# ----- state_dict / load_state_dict: resuming gives the same trajectory --------------------------------
@pytest.mark.parametrize("name,cls,rule,kw", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_resume_is_exact(name, cls, rule, kw):
    X, y = _data()
    model = _model()
    opt = cls(model.parameters(), **kw)
    _train_fastbp(model, opt, X, y, 6)
    saved_model, saved_opt = model.state_dict(), opt.state_dict()
    snapshot = copy.deepcopy(saved_opt)
    _, uninterrupted = _train_fastbp(model, opt, X, y, 6)
    # the saved dict is a copy: training on did not change it
    for i, st in snapshot["state"].items():
        for key, v in st.items():
            np.testing.assert_array_equal(v, saved_opt["state"][i][key])

    fresh = _model(seed=123)
    opt2 = cls(fresh.parameters(), **kw)
    fresh.load_state_dict(saved_model)
    opt2.load_state_dict(saved_opt)
    _, resumed = _train_fastbp(fresh, opt2, X, y, 6)
    for t, (a, b) in enumerate(zip(uninterrupted, resumed)):
        for k in range(len(a)):
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: parameter {k}, step {t + 1} after resume")


def test_state_dict_contents_and_step_counters():
    p = nn.Parameter(np.ones((2, 3)))
    opt = optim.Adam([p], lr=0.1, amsgrad=True)
    for _ in range(4):
        p.grad = np.full((2, 3), 0.5)
        opt.step()
    sd = opt.state_dict()
    assert sd["state"][0]["step"] == 4
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["param_groups"][0]["params"] == [0] and sd["param_groups"][0]["betas"] == (0.9, 0.999)
    for cls in (optim.Adagrad, optim.RMSprop, optim.Adadelta):
        o = cls([p], lr=0.1)
        p.grad = np.ones((2, 3))
        o.step()
        o.step()
        assert o.state_dict()["state"][0]["step"] == 2
    assert set(o.state_dict()["state"][0]) == {"step", "square_avg", "acc_delta"}


def test_load_state_dict_rejects_mismatches():
    a = nn.Parameter(np.ones(3))
    opt = optim.Adam([a], lr=0.1)
    a.grad = np.ones(3)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match=r"exp_avg.*\(3,\).*\(4,\)"):
        optim.Adam([nn.Parameter(np.ones(4))], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="parameter groups"):
        optim.Adam([{"params": [nn.Parameter(np.ones(3))]}, {"params": [nn.Parameter(np.ones(3))]}]).load_state_dict(sd)
    bad = copy.deepcopy(sd)
    bad["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="-1.0"):
        optim.Adam([nn.Parameter(np.ones(3))], lr=0.1).load_state_dict(bad)


def test_state_dict_casts_buffers_to_parameter_dtype():
    a = nn.Parameter(np.ones(3))
    opt = optim.RMSprop([a], lr=0.1, momentum=0.9, centered=True)
    a.grad = np.ones(3)
    opt.step()
    b = nn.Parameter(np.ones(3, dtype=np.float32))
    ob = optim.RMSprop([b], lr=0.1, momentum=0.9, centered=True)
    ob.load_state_dict(opt.state_dict())
    b.grad = np.ones(3, dtype=np.float32)
    ob.step()  # the float32 kernel accepts the loaded state
    for key in ("square_avg", "grad_avg", "momentum_buffer"):
        assert ob.state[id(b)][key].dtype == np.float32


# ----- hyperparameter validation (PyTorch's checks and messages) ---------------------------------------
BAD = [
    (optim.SGD, dict(lr=-0.1), "Invalid learning rate: -0.1"),
    (optim.SGD, dict(lr=0.1, momentum=-0.9), "Invalid momentum value: -0.9"),
    (optim.Adagrad, dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (optim.Adagrad, dict(lr_decay=-0.5), "Invalid lr_decay value: -0.5"),
    (optim.Adagrad, dict(weight_decay=-0.5), "Invalid weight_decay value: -0.5"),
    (optim.Adagrad, dict(initial_accumulator_value=-2.0), "Invalid initial_accumulator_value value: -2.0"),
    (optim.Adagrad, dict(eps=-1e-3), "Invalid epsilon value: -0.001"),
    (optim.RMSprop, dict(lr=-0.01), "Invalid learning rate: -0.01"),
    (optim.RMSprop, dict(alpha=-0.5), "Invalid alpha value: -0.5"),
    (optim.RMSprop, dict(eps=-1.0), "Invalid epsilon value: -1.0"),
    (optim.RMSprop, dict(momentum=-0.1), "Invalid momentum value: -0.1"),
    (optim.RMSprop, dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
    (optim.Adadelta, dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (optim.Adadelta, dict(rho=1.5), "Invalid rho value: 1.5"),
    (optim.Adadelta, dict(eps=-1e-6), "Invalid epsilon value: -1e-06"),
    (optim.Adadelta, dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
    (optim.Adam, dict(lr=-1e-3), "Invalid learning rate: -0.001"),
    (optim.Adam, dict(lr=float("nan")), "Invalid learning rate: nan"),
    (optim.Adam, dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    (optim.Adam, dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (optim.Adam, dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
    (optim.Adam, dict(weight_decay=-1.0), "Invalid weight_decay value: -1.0"),
    (optim.AdamW, dict(betas=(0.9, 1.5)), "Invalid beta parameter at index 1: 1.5"),
    (optim.AdamW, dict(lr=-2.0), "Invalid learning rate: -2.0"),
    (optim.LBFGS, dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (optim.LBFGS, dict(history_size=0), "Invalid history_size value: 0"),
    (optim.LBFGS, dict(line_search_fn="armijo"), "armijo"),
]


@pytest.mark.parametrize("cls,kw,msg", BAD, ids=[f"{c.__name__}-{m}" for c, _, m in BAD])
def test_invalid_hyperparameters_raise(cls, kw, msg):
    with pytest.raises(ValueError) as exc:
        cls([nn.Parameter(np.ones(2))], **kw)
    assert msg in str(exc.value)


def test_optimizer_input_errors():
    p = nn.Parameter(np.ones(2))
    with pytest.raises(ValueError, match="more than once"):
        optim.Adam([p, p])
    with pytest.raises(ValueError, match="empty"):
        optim.RMSprop([])
    with pytest.raises(TypeError, match="require grad"):
        optim.Adagrad([tensor(np.ones(2))])
    with pytest.raises(ValueError, match="parameter groups"):
        optim.LBFGS([{"params": [p]}, {"params": [nn.Parameter(np.ones(2))]}])
    opt = optim.Adam([p])
    p.grad = np.ones(3)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        opt.step()
    p.grad = np.ones(2, dtype=np.float32)
    with pytest.raises(TypeError, match="float32"):
        opt.step()


# ----- the kernels reject bad state directly --------------------------------------------------------
@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_step_kernels_validate(backend):
    B = fastbp._backend.compiled if backend == "compiled" else fastbp._backend.reference
    p, g = np.ones(4), np.ones(4)
    z = np.zeros(4)
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        B.adam_step(p, g, z.copy(), z.copy(), None, 1, 0.1, amsgrad=True)
    with pytest.raises(ValueError, match="beta1"):
        B.adam_step(p, g, z.copy(), z.copy(), None, 1, 0.1, beta1=1.0)
    with pytest.raises(ValueError, match="step"):
        B.adam_step(p, g, z.copy(), z.copy(), None, 0, 0.1)
    with pytest.raises(ValueError, match="grad_avg"):
        B.rmsprop_step(p, g, z.copy(), None, None, 0.1, centered=True)
    with pytest.raises(ValueError, match="shape"):
        B.adagrad_step(p, g, np.zeros(5), 1, 0.1)
    with pytest.raises(TypeError, match="dtype"):
        B.adagrad_step(p, g, np.zeros(4, dtype=np.float32), 1, 0.1)
    np.testing.assert_array_equal(p, np.ones(4))  # nothing was touched by the failed calls


# ----- PyTorch itself, when installed (an extra check on top of the textbook rules) ---------------------
TORCH_CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.01, initial_accumulator_value=0.3)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.8, centered=True, weight_decay=0.02)),
    ("RMSprop", dict(lr=0.01)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.05)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.05, amsgrad=True)),
    ("Adam", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]


@pytest.mark.parametrize("name,kw", TORCH_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(TORCH_CASES)])
def test_matches_torch_optimizers(name, kw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) * (1 + 2 * (t % 3)) for t in range(20)]
    ours = nn.Parameter(p0.copy())
    o = getattr(optim, name)([ours], **kw)
    theirs = torch.tensor(p0.copy(), requires_grad=True)
    ot = getattr(torch.optim, name)([theirs], foreach=False, **kw)
    for t, g in enumerate(grads):
        ours.grad = g.copy()
        theirs.grad = torch.tensor(g.copy())
        o.step()
        ot.step()
        np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=f"step {t}")


# ----- L-BFGS -----------------------------------------------------------------------------------------
def test_two_loop_recursion_equals_bfgs_inverse_update():
    """The two-loop direction equals -H g with H from the explicit BFGS inverse-Hessian recursion
    H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T, starting from h_diag * I."""
    rng = np.random.default_rng(0)
    n = 6
    A = rng.standard_normal((n, n))
    A = A @ A.T + n * np.eye(n)  # SPD: y = A s has positive curvature
    s_hist = [rng.standard_normal(n) for _ in range(4)]
    y_hist = [A @ s for s in s_hist]
    rho = [1.0 / (y @ s) for s, y in zip(s_hist, y_hist)]
    h_diag = 0.7
    H = h_diag * np.eye(n)
    for s, y, r in zip(s_hist, y_hist, rho):
        V = np.eye(n) - r * np.outer(y, s)
        H = V.T @ H @ V + r * np.outer(s, s)
    g = rng.standard_normal(n)
    np.testing.assert_allclose(two_loop_direction(g, s_hist, y_hist, rho, h_diag), -H @ g, rtol=1e-10, atol=1e-12)


def test_cubic_minimizer():
    f = lambda x: x ** 3 - 3 * x  # noqa: E731  local minimum at x = 1
    df = lambda x: 3 * x ** 2 - 3  # noqa: E731
    assert cubic_minimizer(0.0, f(0.0), df(0.0), 2.0, f(2.0), df(2.0)) == pytest.approx(1.0, abs=1e-12)
    assert cubic_minimizer(2.0, f(2.0), df(2.0), 0.0, f(0.0), df(0.0)) == pytest.approx(1.0, abs=1e-12)
    assert cubic_minimizer(0.0, f(0.0), df(0.0), 2.0, f(2.0), df(2.0), bounds=(1.5, 3.0)) == 1.5
    # a concave piece has no minimiser: the midpoint of the bounds
    assert cubic_minimizer(0.0, 0.0, 1.0, 1.0, 0.0, -1.0, bounds=(0.0, 4.0)) == 2.0


@pytest.mark.parametrize("t0", [1e-3, 1.0, 30.0])
def test_strong_wolfe_conditions_hold(t0):
    # phi(t) = f(x + t d) for a 1-D non-quadratic f
    f = lambda x: np.log(1 + np.exp(x - 2.0)) + 0.05 * x ** 2  # noqa: E731
    df = lambda x: 1 / (1 + np.exp(-(x - 2.0))) + 0.1 * x  # noqa: E731
    x0, d = 4.0, -1.0
    calls = []

    def phi(t):
        calls.append(t)
        g = np.array([df(x0 + t * d)])
        return float(f(x0 + t * d)), g, float(g[0] * d)

    g0 = df(x0) * d
    fv, g, t, evals = strong_wolfe(phi, t0, float(f(x0)), np.array([df(x0)]), g0, abs(d))
    assert evals == len(calls)
    assert fv <= f(x0) + 1e-4 * t * g0  # sufficient decrease
    assert abs(g[0] * d) <= 0.9 * abs(g0)  # curvature (strong)
    assert fv == pytest.approx(f(x0 + t * d))


def _quadratic(n=12, seed=0):
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((n, n))
    A = Q @ Q.T / n + np.eye(n)
    b = rng.standard_normal(n)
    return A, b


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_solves_a_quadratic(line_search_fn):
    A, b = _quadratic()
    x = nn.Parameter(np.zeros(len(b)))
    opt = optim.LBFGS([x], max_iter=100, history_size=8, line_search_fn=line_search_fn, tolerance_grad=1e-10,
                      tolerance_change=1e-14)
    At, bt = tensor(A), tensor(b)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (x * (At @ x.reshape(-1, 1)).reshape(-1)).sum() - (bt * x).sum()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    np.testing.assert_allclose(x.data, np.linalg.solve(A, b), rtol=1e-7, atol=1e-8)
    assert opt.state[id(x)]["func_evals"] > 1


def test_lbfgs_logistic_regression_reaches_the_optimum():
    import scipy.optimize as scipy_optimize  # scipy is a runtime dependency: never skipped
    rng = np.random.default_rng(3)
    X = rng.standard_normal((60, 4))
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.5 * rng.standard_normal(60) > 0).astype(float)
    lam = 0.1

    def f_np(w):
        z = X @ w
        return np.mean(np.logaddexp(0, z) - y * z) + 0.5 * lam * w @ w

    def g_np(w):
        return X.T @ (1 / (1 + np.exp(-(X @ w))) - y) / len(y) + lam * w

    w_star = scipy_optimize.minimize(f_np, np.zeros(4), jac=g_np, method="BFGS", options={"gtol": 1e-12}).x
    w = nn.Parameter(np.zeros(4))
    # the default tolerance_change=1e-9 on the loss stops at |grad| ~ 1e-6 here (as PyTorch's would)
    opt = optim.LBFGS([w], line_search_fn="strong_wolfe", max_iter=50, tolerance_grad=1e-10, tolerance_change=1e-15)
    Xt = tensor(X)

    def closure():
        opt.zero_grad()
        z = (Xt @ w.reshape(4, 1)).reshape(-1)
        # log(1 + e^z) - y z, computed stably enough for |z| < 10 on this data
        loss = ((z.exp() + 1).log() - tensor(y) * z).mean() + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    np.testing.assert_allclose(w.data, w_star, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g_np(w.data), 0, atol=1e-7)


def _rosenbrock_closure(opt, w):
    def closure():
        opt.zero_grad()
        x, y = w[0], w[1]
        loss = (1 - x) ** 2 + 100 * (y - x * x) ** 2
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_state_dict_resume(line_search_fn):
    w = nn.Parameter(np.array([-1.2, 1.0]))
    opt = optim.LBFGS([w], lr=0.5 if line_search_fn is None else 1.0, max_iter=4, history_size=3,
                      line_search_fn=line_search_fn)
    closure = _rosenbrock_closure(opt, w)
    opt.step(closure)
    saved, w_saved = opt.state_dict(), w.data.copy()
    opt.step(closure)
    opt.step(closure)
    w2 = nn.Parameter(w_saved)
    opt2 = optim.LBFGS([w2], lr=0.5 if line_search_fn is None else 1.0, max_iter=4, history_size=3,
                       line_search_fn=line_search_fn)
    opt2.load_state_dict(saved)
    closure2 = _rosenbrock_closure(opt2, w2)
    opt2.step(closure2)
    opt2.step(closure2)
    np.testing.assert_array_equal(w.data, w2.data)
    assert opt2.state[id(w2)]["n_iter"] == opt.state[id(w)]["n_iter"]
    assert opt2.state[id(w2)]["func_evals"] == opt.state[id(w)]["func_evals"]
    assert len(opt2.state[id(w2)]["old_dirs"]) <= 3


def test_lbfgs_needs_a_closure():
    w = nn.Parameter(np.ones(2))
    with pytest.raises(RuntimeError, match="closure"):
        optim.LBFGS([w]).step(None)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_matches_torch(line_search_fn):
    torch = pytest.importorskip("torch")
    kw = dict(lr=1.0 if line_search_fn else 0.2, max_iter=6, history_size=4, line_search_fn=line_search_fn)
    w = nn.Parameter(np.array([-1.2, 1.0]))
    opt = optim.LBFGS([w], **kw)
    closure = _rosenbrock_closure(opt, w)
    wt = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    ot = torch.optim.LBFGS([wt], **kw)

    def tclosure():
        ot.zero_grad()
        loss = (1 - wt[0]) ** 2 + 100 * (wt[1] - wt[0] * wt[0]) ** 2
        loss.backward()
        return loss

    for k in range(4):
        la = opt.step(closure).item()
        lb = ot.step(tclosure).item()
        assert la == pytest.approx(lb, rel=1e-9)
        np.testing.assert_allclose(w.data, wt.detach().numpy(), rtol=1e-8, atol=1e-10, err_msg=f"step() call {k}")
        assert opt.state[id(w)]["func_evals"] == ot.state[ot.param_groups[0]["params"][0]]["func_evals"]


# ----- gradient clipping -------------------------------------------------------------------------------
def _params_with_grads(rng, shapes=((3, 4), (5,), (2, 2))):
    ps = []
    for s in shapes:
        p = nn.Parameter(np.zeros(s))
        p.grad = rng.standard_normal(s)
        ps.append(p)
    return ps


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
def test_clip_grad_norm(norm_type, rng):
    ps = _params_with_grads(rng)
    flat = np.concatenate([p.grad.ravel() for p in ps])
    expected = np.max(np.abs(flat)) if math.isinf(norm_type) else np.sum(np.abs(flat) ** norm_type) ** (1 / norm_type)
    before = [p.grad.copy() for p in ps]
    total = clip_grad_norm_(ps, max_norm=0.5, norm_type=norm_type)
    assert isinstance(total, float) and total == pytest.approx(expected, rel=1e-12)
    coef = 0.5 / (expected + 1e-6)
    for p, g in zip(ps, before):
        np.testing.assert_allclose(p.grad, g * coef, rtol=1e-12)
    flat = np.concatenate([p.grad.ravel() for p in ps])
    new_norm = np.max(np.abs(flat)) if math.isinf(norm_type) else np.sum(np.abs(flat) ** norm_type) ** (1 / norm_type)
    assert new_norm == pytest.approx(0.5, rel=1e-5)


def test_clip_grad_norm_leaves_small_gradients_and_skips_none(rng):
    ps = _params_with_grads(rng)
    ps.append(nn.Parameter(np.zeros(3)))  # no grad
    before = [p.grad.copy() for p in ps[:-1]]
    total = clip_grad_norm_(ps, max_norm=100.0)
    assert total == pytest.approx(np.sqrt(sum((g ** 2).sum() for g in before)))
    for p, g in zip(ps, before):
        np.testing.assert_array_equal(p.grad, g)
    assert ps[-1].grad is None
    single = ps[0]
    assert clip_grad_norm_(single, 1e-3) == pytest.approx(np.linalg.norm(before[0]))


def test_clip_grad_norm_float32_and_nonfinite():
    p = nn.Parameter(np.zeros(4, dtype=np.float32))
    p.grad = np.array([3.0, 4.0, 0.0, 0.0], dtype=np.float32)
    assert clip_grad_norm_([p], 1.0) == pytest.approx(5.0)
    assert p.grad.dtype == np.float32
    np.testing.assert_allclose(p.grad, [0.6, 0.8, 0, 0], rtol=1e-6)
    p.grad = np.array([np.inf, 1.0, 0.0, 0.0], dtype=np.float32)
    with pytest.raises(RuntimeError, match="inf"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm_([p], -1.0)


def test_clip_grad_value(rng):
    ps = _params_with_grads(rng)
    before = [p.grad.copy() for p in ps]
    clip_grad_value_(ps, 0.3)
    for p, g in zip(ps, before):
        np.testing.assert_array_equal(p.grad, np.minimum(np.maximum(g, -0.3), 0.3))
    assert max(np.abs(p.grad).max() for p in ps) == 0.3
    with pytest.raises(ValueError, match="clip_value"):
        clip_grad_value_(ps, -1)


def test_clipping_matches_torch(rng):
    torch = pytest.importorskip("torch")
    for norm_type in (2.0, float("inf"), 1.5):
        ps = _params_with_grads(rng)
        ts = [torch.zeros(p.shape, dtype=torch.float64, requires_grad=True) for p in ps]
        for p, t in zip(ps, ts):
            t.grad = torch.tensor(p.grad.copy())
        total = clip_grad_norm_(ps, 0.7, norm_type)
        ttotal = torch.nn.utils.clip_grad_norm_(ts, 0.7, norm_type)
        assert total == pytest.approx(ttotal.item(), rel=1e-12)
        for p, t in zip(ps, ts):
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12)


# ----- learning-rate schedules -----------------------------------------------------------------------
def _opt(lrs=(0.1,)):
    return optim.SGD([{"params": [nn.Parameter(np.ones(1))], "lr": lr} for lr in lrs], lr=lrs[0])


def _run(s, n):
    out = [s.get_last_lr()]
    for _ in range(n):
        s.step()
        out.append(s.get_last_lr())
    return np.array(out)


SCHEDULES = [
    ("StepLR", lambda o: sched.StepLR(o, step_size=3, gamma=0.5), lambda b, t: b * 0.5 ** (t // 3)),
    ("MultiStepLR", lambda o: sched.MultiStepLR(o, milestones=[7, 2, 5], gamma=0.1),
     lambda b, t: b * 0.1 ** sum(t >= m for m in (2, 5, 7))),
    ("ExponentialLR", lambda o: sched.ExponentialLR(o, gamma=0.9), lambda b, t: b * 0.9 ** t),
    ("CosineAnnealingLR", lambda o: sched.CosineAnnealingLR(o, T_max=8, eta_min=0.01),
     lambda b, t: 0.01 + (b - 0.01) * (1 + math.cos(math.pi * t / 8)) / 2),
    ("LinearLR-decay", lambda o: sched.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=10),
     lambda b, t: b * (1 - min(t, 10) / 10)),
    ("LinearLR-warmup", lambda o: sched.LinearLR(o, start_factor=0.25, total_iters=4),
     lambda b, t: b * (0.25 + 0.75 * min(t, 4) / 4)),
    ("InverseSqrtLR", lambda o: sched.InverseSqrtLR(o, timescale=4), lambda b, t: b * math.sqrt(4 / (4 + t))),
    ("LinearWarmup+InverseSqrt", lambda o: sched.LinearWarmup(o, 4, after=sched.InverseSqrtLR(o, timescale=4)),
     lambda b, t: b * t / 4 if t < 4 else b * math.sqrt(4 / t)),
    ("LinearWarmup+Cosine", lambda o: sched.LinearWarmup(o, 3, after=sched.CosineAnnealingLR(o, T_max=10),
                                                         start_factor=0.1),
     lambda b, t: b * (0.1 + 0.9 * t / 3) if t < 3 else b * (1 + math.cos(math.pi * (t - 3) / 10)) / 2),
    ("LinearWarmup+Step", lambda o: sched.LinearWarmup(o, 2, after=sched.StepLR(o, 4, 0.5)),
     lambda b, t: b * t / 2 if t < 2 else b * 0.5 ** ((t - 2) // 4)),
    ("LinearWarmup-alone", lambda o: sched.LinearWarmup(o, 5), lambda b, t: b * min(t, 5) / 5),
    ("SequentialLR", lambda o: sched.SequentialLR(o, [sched.ExponentialLR(o, 0.5), sched.StepLR(o, 2, 0.1)], [3]),
     lambda b, t: b * 0.5 ** t if t < 3 else b * 0.1 ** ((t - 3) // 2)),
]


@pytest.mark.parametrize("name,make,formula", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedule_closed_forms(name, make, formula):
    o = _opt((0.1, 0.02))
    s = make(o)
    got = _run(s, 20)
    want = np.array([[formula(b, t) for b in (0.1, 0.02)] for t in range(21)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert [g["lr"] for g in o.param_groups] == s.get_last_lr()


@pytest.mark.parametrize("name,make,formula", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedule_state_dict_resume(name, make, formula):
    o = _opt()
    s = make(o)
    _run(s, 6)
    saved_sched, saved_opt = s.state_dict(), o.state_dict()
    rest = _run(s, 9)
    o2 = _opt((0.5,))  # a different starting lr: everything must come from the state dicts
    o2.load_state_dict(saved_opt)
    s2 = make(o2)
    s2.load_state_dict(saved_sched)
    assert s2.get_last_lr() == rest[0].tolist()
    np.testing.assert_array_equal(_run(s2, 9), rest)


def test_scheduled_lr_reaches_the_update():
    p = nn.Parameter(np.zeros(1))
    o = optim.SGD([p], lr=1.0)
    s = sched.StepLR(o, step_size=1, gamma=0.5)
    for t in range(4):
        p.grad = np.ones(1)
        before = p.data.copy()
        o.step()
        assert before - p.data == pytest.approx(0.5 ** t)
        s.step()


def test_schedule_validation():
    o = _opt()
    with pytest.raises(ValueError, match="step_size"):
        sched.StepLR(o, 0)
    with pytest.raises(ValueError, match="T_max"):
        sched.CosineAnnealingLR(o, T_max=0)
    with pytest.raises(ValueError, match="start_factor"):
        sched.LinearLR(o, start_factor=0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        sched.LinearWarmup(o, 0)
    with pytest.raises(ValueError, match="milestones"):
        sched.SequentialLR(o, [sched.ExponentialLR(o, 0.9), sched.ExponentialLR(o, 0.5)], [])
    with pytest.raises(ValueError, match="same optimizer"):
        sched.LinearWarmup(o, 3, after=sched.ExponentialLR(_opt(), 0.9))
    with pytest.raises(KeyError, match="initial_lr"):
        sched.StepLR(_opt(), 2, last_epoch=5)


TORCH_SCHEDULES = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[2, 5, 5, 9], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.8)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)),
    ("LinearLR", dict(start_factor=0.2, end_factor=0.9, total_iters=6)),
]


@pytest.mark.parametrize("name,kw", TORCH_SCHEDULES, ids=[s[0] for s in TORCH_SCHEDULES])
def test_schedules_match_torch(name, kw):
    torch = pytest.importorskip("torch")
    o = _opt((0.1, 0.03))
    to = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in (0.1, 0.03)], lr=0.1)
    s = getattr(sched, name)(o, **kw)
    ts = getattr(torch.optim.lr_scheduler, name)(to, **kw)
    for t in range(16):  # past T_max for the cosine
        np.testing.assert_allclose(s.get_last_lr(), ts.get_last_lr(), rtol=1e-10, err_msg=f"{name} step {t}")
        to.step()
        s.step()
        ts.step()


def test_sequential_matches_torch():
    torch = pytest.importorskip("torch")
    o = _opt()
    to = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    s = sched.SequentialLR(o, [sched.LinearLR(o, 0.1, 1.0, 4), sched.CosineAnnealingLR(o, T_max=6)], [4])
    ts = torch.optim.lr_scheduler.SequentialLR(
        to, [torch.optim.lr_scheduler.LinearLR(to, 0.1, 1.0, 4), torch.optim.lr_scheduler.CosineAnnealingLR(to, 6)],
        [4])
    for t in range(12):
        np.testing.assert_allclose(s.get_last_lr(), ts.get_last_lr(), rtol=1e-10, err_msg=f"step {t}")
        to.step()
        s.step()
        ts.step()


# ----- initialisation ----------------------------------------------------------------------------------
def test_calculate_gain():
    assert init.calculate_gain("linear") == 1 and init.calculate_gain("conv2d") == 1
    assert init.calculate_gain("sigmoid") == 1
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("selu") == 0.75
    with pytest.raises(ValueError, match="swish"):
        init.calculate_gain("swish")


def _param(shape, dtype=np.float64):
    return nn.Parameter(np.zeros(shape, dtype=dtype))


def _check_uniform(w, bound):
    x = w.data.ravel()
    assert np.abs(x).max() <= bound and np.abs(x).max() > 0.99 * bound
    assert abs(x.mean()) < 0.02 * bound
    assert x.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)


def _check_normal(w, std):
    x = w.data.ravel()
    assert abs(x.mean()) < 0.02 * std
    assert x.std() == pytest.approx(std, rel=0.02)
    # about 68.3% within one standard deviation
    assert np.mean(np.abs(x) < std) == pytest.approx(0.6827, abs=0.01)


def test_kaiming_and_xavier_statistics():
    fastbp.manual_seed(1)
    w = init.kaiming_uniform_(_param((300, 400)), nonlinearity="relu")
    _check_uniform(w, math.sqrt(2) * math.sqrt(3 / 400))
    w = init.kaiming_uniform_(_param((300, 400)), a=0.1, mode="fan_out")
    _check_uniform(w, math.sqrt(2 / 1.01) * math.sqrt(3 / 300))
    w = init.kaiming_normal_(_param((300, 400)), nonlinearity="relu")
    _check_normal(w, math.sqrt(2 / 400))
    w = init.kaiming_normal_(_param((64, 32, 5, 5)), mode="fan_out", nonlinearity="tanh")  # conv: fan_out = 64*25
    _check_normal(w, (5 / 3) / math.sqrt(64 * 25))
    w = init.xavier_uniform_(_param((200, 500)), gain=2.0)
    _check_uniform(w, 2.0 * math.sqrt(6 / 700))
    w = init.xavier_normal_(_param((96, 48, 3, 3)))  # fans 48*9 and 96*9
    _check_normal(w, math.sqrt(2 / (48 * 9 + 96 * 9)))


def test_simple_fills():
    fastbp.manual_seed(2)
    w = init.normal_(_param((400, 300)), mean=3.0, std=0.5)
    assert w.data.mean() == pytest.approx(3.0, abs=0.01) and w.data.std() == pytest.approx(0.5, rel=0.02)
    w = init.uniform_(_param((400, 300)), -2.0, 4.0)
    assert w.data.min() >= -2.0 and w.data.max() <= 4.0 and w.data.mean() == pytest.approx(1.0, abs=0.03)
    np.testing.assert_array_equal(init.zeros_(init.ones_(_param((2, 3)))).data, 0)
    np.testing.assert_array_equal(init.ones_(_param((2, 3))).data, 1)
    np.testing.assert_array_equal(init.constant_(_param((4,), np.float32), 0.25).data, np.float32(0.25))
    arr = np.empty((3, 3))
    assert init.ones_(arr) is arr and (arr == 1).all()  # plain arrays work too


def test_init_is_seeded_and_dtype_independent():
    draws = []
    for seed, dtype in [(5, np.float64), (5, np.float64), (5, np.float32), (6, np.float64)]:
        fastbp.manual_seed(seed)
        a = init.kaiming_normal_(_param((20, 10), dtype))
        b = init.xavier_uniform_(_param((20, 10), dtype))
        assert a.data.dtype == dtype
        draws.append(np.concatenate([a.data.ravel(), b.data.ravel()]))
    np.testing.assert_array_equal(draws[0], draws[1])
    np.testing.assert_allclose(draws[2], draws[0], rtol=1e-6)  # float32 = the float64 draw, rounded
    assert not np.allclose(draws[3], draws[0])


def test_seeded_training_is_reproducible():
    X, y = _data()
    runs = []
    for _ in range(2):
        model = _model(seed=11, dtype=np.float32)
        runs.append(_train_fastbp(model, optim.Adam(model.parameters(), lr=0.01), X.astype(np.float32), y, 5)[0])
    assert runs[0] == runs[1]


def test_init_errors():
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.kaiming_uniform_(_param((5,)))
    with pytest.raises(ValueError, match="fan_avg"):
        init.kaiming_normal_(_param((3, 4)), mode="fan_avg")
    with pytest.raises(ValueError, match="std"):
        init.normal_(_param((3,)), std=-1.0)
    with pytest.raises(TypeError):
        init.zeros_([1.0, 2.0])


def test_linear_default_init_is_unchanged():
    fastbp.manual_seed(0)
    lin = nn.Linear(500, 200)
    _check_uniform(lin.weight, 1 / math.sqrt(500))  # kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in))
    assert np.abs(lin.bias.data).max() <= 1 / math.sqrt(500)


def test_gains_match_torch():
    torch = pytest.importorskip("torch")
    for nl, param in [("linear", None), ("tanh", None), ("relu", None), ("leaky_relu", None), ("leaky_relu", 0.3),
                      ("selu", None), ("conv2d", None)]:
        assert init.calculate_gain(nl, param) == pytest.approx(torch.nn.init.calculate_gain(nl, param), rel=1e-12)
    t = torch.empty(16, 8, 3, 3)
    assert init._calculate_fan_in_and_fan_out(np.empty((16, 8, 3, 3))) == \
        torch.nn.init._calculate_fan_in_and_fan_out(t)


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decaying_state_is_stored_as_zero_not_subnormal(backend, dtype):
    """One real gradient, then zeros: the state decays through the subnormal range. It must be stored
    as 0 there (subnormal arithmetic is several times slower), and the parameters must still match the
    unflushed rule (they differ by less than lr * smallest-normal per step)."""
    tiny = np.finfo(dtype).tiny
    steps = 800 if dtype == np.float32 else 7000  # enough for 0.9**k to cross the normal range
    makers = {
        "sgd": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
        "adam": lambda ps: optim.Adam(ps, lr=0.01),
        "rmsprop": lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.9, centered=True),
    }
    with fastbp.backend(backend):
        for name, make in makers.items():
            p = nn.Parameter(np.full(4, 0.5, dtype=dtype))
            opt = make([p])
            p.grad = np.array([1e-3, -2e-3, 0.0, 5e-4], dtype=dtype)
            opt.step()
            for _ in range(steps):
                p.grad = np.zeros(4, dtype=dtype)
                opt.step()
            state = opt.state[id(p)]
            for key, value in state.items():
                if isinstance(value, np.ndarray):
                    sub = (np.abs(value) < tiny) & (value != 0)
                    assert not sub.any(), f"{name} {key} holds subnormal values {value[sub]}"
                    assert np.all(np.isfinite(value))
            assert np.all(np.isfinite(p.data)) and not np.array_equal(p.data, np.full(4, 0.5, dtype=dtype))
            if name == "sgd":
                # PyTorch's rule without any flushing, in the same dtype: the parameters are identical
                g0 = np.array([1e-3, -2e-3, 0.0, 5e-4], dtype=dtype)
                q, buf, lr, mu = np.full(4, 0.5, dtype=dtype), g0.copy(), dtype(0.1), dtype(0.9)
                q = q - lr * buf
                went_subnormal = False
                for _ in range(steps):
                    buf = mu * buf + dtype(1) * np.zeros(4, dtype=dtype)
                    went_subnormal |= bool(((np.abs(buf) < tiny) & (buf != 0)).any())
                    q = q - lr * buf
                assert went_subnormal, "the unflushed rule never reached the subnormal range: test too short"
                np.testing.assert_array_equal(p.data, q)


def test_subnormal_flush_keeps_nan_and_inf():
    for B in (fastbp._backend.compiled, fastbp._backend.reference):
        p = np.zeros(3, dtype=np.float32)
        buf = np.array([np.nan, np.inf, 1e-39], dtype=np.float32)  # 1e-39 is subnormal in float32
        B.sgd_step(p, np.zeros(3, dtype=np.float32), buf, 0.1, 0.5)
        assert np.isnan(buf[0]) and buf[1] == np.inf and buf[2] == 0.0


@pytest.mark.parametrize("n", [5, 300000])  # serial and OpenMP loops
def test_amsgrad_maximum_propagates_nan(n):
    """AMSGrad's running maximum follows torch.maximum (and np.maximum): a NaN on either side gives NaN.
    The compiled kernel once kept the finite side when the stored maximum was NaN."""
    for dtype in (np.float32, np.float64):
        out = {}
        for B in (fastbp._backend.compiled, fastbp._backend.reference):
            p, g = np.full(n, 0.5, dtype=dtype), np.full(n, 0.1, dtype=dtype)
            m, v, vmax = np.zeros(n, dtype), np.zeros(n, dtype), np.zeros(n, dtype)
            vmax[:3] = [np.nan, 1.0, np.inf]
            B.adam_step(p, g, m, v, vmax, 1, 0.01, amsgrad=True)
            out[B.name] = (p, vmax)
        for k in range(2):
            np.testing.assert_array_equal(out["compiled"][k], out["reference"][k])
        assert np.isnan(out["compiled"][1][0]) and np.isnan(out["compiled"][0][0])


def test_both_backends_refuse_misaligned_state():
    """In-place state must be writeable, aligned and C-contiguous in both backends (the compiled kernels cannot
    update a misaligned array in place through a copy; the reference used to accept one)."""
    buf = np.zeros(4 * 8 + 1, np.uint8)
    for B in (fastbp._backend.compiled, fastbp._backend.reference):
        p = buf[1:].view(np.float32)
        assert not p.flags.aligned
        with pytest.raises(ValueError, match="aligned"):
            B.sgd_step(p, np.zeros(8, np.float32), None, 0.1)
        m = buf[1:].view(np.float32)
        with pytest.raises(ValueError, match="aligned"):
            B.adam_step(np.zeros(8, np.float32), np.zeros(8, np.float32), m, np.zeros(8, np.float32), None, 1, 0.1)
