"""Captured training steps (fastbp.compile): replay gives the same bits as eager for every optimizer, both
dtypes, MLP and LeNet-5 (with BatchNorm and Dropout), schedulers, clipping and weight decay; what cannot be
captured runs eagerly (warning) or raises CaptureError at capture time; replay allocates nothing per step."""
import resource
import tracemalloc
import warnings

import numpy as np
import pytest

import fastbp
import fastbp.nn as nn
from fastbp import optim

OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.05),
    "sgd_momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd_nesterov_wd": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "sgd_dampening": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.5, dampening=0.3),
    "adam": lambda ps: optim.Adam(ps, lr=1e-3),
    "adam_wd": lambda ps: optim.Adam(ps, lr=1e-3, weight_decay=1e-2),
    "adamw": lambda ps: optim.AdamW(ps, lr=1e-3, weight_decay=1e-2),
    "amsgrad": lambda ps: optim.Adam(ps, lr=1e-3, amsgrad=True),
    "rmsprop": lambda ps: optim.RMSprop(ps, lr=1e-3),
    "rmsprop_centered_momentum": lambda ps: optim.RMSprop(ps, lr=1e-3, momentum=0.9, centered=True),
    "adagrad": lambda ps: optim.Adagrad(ps, lr=1e-2),
    "adadelta": lambda ps: optim.Adadelta(ps, lr=1.0, weight_decay=1e-3),
}


def mlp(dtype):
    fastbp.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 5))
    return m.double() if dtype == np.float64 else m


def lenet(dtype, bn=False, dropout=False):
    fastbp.manual_seed(0)
    layers = [nn.Conv2d(1, 6, 5, padding=2)]
    if bn:
        layers.append(nn.BatchNorm2d(6))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
               nn.Linear(400, 120), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.3))
    layers += [nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10)]
    m = nn.Sequential(*layers)
    return m.double() if dtype == np.float64 else m


def batches(shape, classes, dtype, n=4, seed=1):
    rng = np.random.default_rng(seed)
    return [(fastbp.tensor(rng.standard_normal(shape).astype(dtype)), fastbp.tensor(rng.integers(0, classes, shape[0])))
            for _ in range(n)]


def train(make_model, make_opt, data, steps, compiled, clip=None, scheduler=None, inner_scheduler=False):
    """Run `steps` steps eagerly or captured; returns (losses, parameters, buffers, the step object)."""
    model = make_model()
    opt = make_opt(model.parameters())
    sched = scheduler(opt) if scheduler else None
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if inner_scheduler:
            sched.step()
        return loss

    fastbp.manual_seed(123)  # dropout masks: both runs draw from the same generator state
    run = fastbp.compile(step) if compiled else step
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastbp.CaptureWarning)
        for i in range(steps):
            x, y = data[i % len(data)]
            losses.append(run(x, y).data.copy())
            if sched is not None and not inner_scheduler:
                sched.step()
    params = [p.data.copy() for p in model.parameters()]
    buffers = [np.array(b.data if isinstance(b, fastbp.Tensor) else b, copy=True) for _, b in model.named_buffers()]
    return losses, params, buffers, run


def assert_same_bits(a, b):
    la, pa, ba, _ = a
    lb, pb, bb, _ = b
    assert len(pa) == len(pb) and len(ba) == len(bb)
    for x, y in zip(la + pa + ba, lb + pb + bb):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y, equal_nan=True), np.max(np.abs(x.astype(np.float64) - y))


def assert_replayed(run):
    states = list(run.captures().values())
    assert states and all(s == "ready" for s in states), states


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_mlp_every_optimizer_same_bits(name, dtype):
    data = batches((8, 20), 5, dtype)
    eager = train(lambda: mlp(dtype), OPTIMIZERS[name], data, 7, compiled=False)
    cap = train(lambda: mlp(dtype), OPTIMIZERS[name], data, 7, compiled=True)
    assert_same_bits(eager, cap)
    assert_replayed(cap[3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opt", ["adam", "sgd_momentum"])
def test_lenet_same_bits(opt, dtype):
    data = batches((4, 1, 28, 28), 10, dtype, n=3)
    eager = train(lambda: lenet(dtype), OPTIMIZERS[opt], data, 5, compiled=False)
    cap = train(lambda: lenet(dtype), OPTIMIZERS[opt], data, 5, compiled=True)
    assert_same_bits(eager, cap)
    assert_replayed(cap[3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lenet_batchnorm_dropout_same_bits(dtype):
    """Dropout masks are drawn fresh at each replay from fastbp's generator in eager order; BatchNorm's
    running statistics and num_batches_tracked are updated as eager does."""
    data = batches((4, 1, 28, 28), 10, dtype, n=3)
    make = lambda: lenet(dtype, bn=True, dropout=True)  # noqa: E731
    eager = train(make, OPTIMIZERS["adamw"], data, 5, compiled=False)
    cap = train(make, OPTIMIZERS["adamw"], data, 5, compiled=True)
    assert_same_bits(eager, cap)
    assert_replayed(cap[3])
    assert int(cap[2][-1]) == 5  # num_batches_tracked of the BatchNorm


@pytest.mark.parametrize("inner", [False, True])
def test_scheduler_clipping_weight_decay(inner):
    """The learning rate is read at replay (a scheduler stepping inside or outside the step changes it);
    clip_grad_norm_ runs at each replay."""
    data = batches((8, 20), 5, np.float32)
    kw = dict(clip=0.05, scheduler=lambda o: optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
              inner_scheduler=inner)
    make_opt = lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2)  # noqa: E731
    eager = train(lambda: mlp(np.float32), make_opt, data, 8, compiled=False, **kw)
    cap = train(lambda: mlp(np.float32), make_opt, data, 8, compiled=True, **kw)
    assert_same_bits(eager, cap)
    assert_replayed(cap[3])


def test_lr_changed_between_replays_is_used():
    data = batches((8, 20), 5, np.float32)
    runs = []
    for compiled in (False, True):
        model, opt, step = make_step(lr=0.1, momentum=0.0)
        run = fastbp.compile(step) if compiled else step
        for i in range(6):
            opt.param_groups[0]["lr"] = 0.1 / (i + 1)
            run(*data[i % 4])
        runs.append([p.data.copy() for p in model.parameters()])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def make_step(model=None, lr=0.1, momentum=0.9):
    """(model, optimizer, step): SGD, cross-entropy; the test MLP unless a model is given."""
    model = mlp(np.float32) if model is None else model
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def step(x, y):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return model, opt, step


def test_returns_a_tensor_and_recaptures_new_shapes_lru():
    _, _, step = make_step()
    run = fastbp.compile(step, cache_size=2)
    for n in (4, 4, 5, 5, 6, 6, 4):
        x, y = batches((n, 20), 5, np.float32, n=1, seed=n)[0]
        out = run(x, y)
        assert isinstance(out, fastbp.Tensor) and out.shape == ()
    shapes = [k[0][1] for k in run.captures()]
    assert shapes == [(6, 20), (4, 20)]  # (5, 20) was the least recently used and dropped


def test_returned_loss_is_not_overwritten_by_later_replays():
    _, _, step = make_step()
    run = fastbp.compile(step)
    data = batches((8, 20), 5, np.float32)
    outs = [run(*data[i % 4]) for i in range(6)]
    values = [o.item() for o in outs]
    assert len(set(values)) == len(values)


def test_off_switches():
    data = batches((8, 20), 5, np.float32)
    _, _, step = make_step()
    run = fastbp.compile(step, disable=True)
    for i in range(3):
        run(*data[i])
    assert run.captures() == {}
    _, _, step = make_step()
    run = fastbp.compile(step)
    assert fastbp.is_compile_enabled()
    fastbp.set_compile_enabled(False)
    try:
        for i in range(3):
            run(*data[i])
        assert run.captures() == {}
    finally:
        fastbp.set_compile_enabled(True)
    run(*data[0])
    assert len(run.captures()) == 1


def test_env_var_turns_capture_off():
    from helpers import run_code
    out = run_code("import fastbp; print(fastbp.is_compile_enabled())", env_update={"FASTBP_COMPILE": "0"})
    assert out.returncode == 0 and out.stdout.strip().endswith("False"), out.stderr


def test_decorator_forms():
    model = mlp(np.float32)

    @fastbp.compile
    def f(x):
        return model(x)

    @fastbp.compile(cache_size=1)
    def g(x):
        return model(x)
    x = batches((3, 20), 5, np.float32, n=1)[0][0]
    with fastbp.no_grad():
        for _ in range(3):
            a, b = f(x), g(x)
    assert np.array_equal(a.data, model(x).data) and np.array_equal(b.data, a.data)


@pytest.mark.parametrize("read", ["item", "float", "bool", "numpy", "tolist"])
def test_reading_tensor_data_raises_at_capture(read):
    model, opt, _ = make_step()

    def step(x, y):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        v = {"item": lambda: loss.item(), "float": lambda: float(loss), "bool": lambda: bool(loss > 1),
             "numpy": lambda: loss.numpy(), "tolist": lambda: loss.tolist()}[read]()
        loss.backward()
        opt.step()
        return loss, v
    with pytest.raises(fastbp.CaptureError, match="reads tensor data"):
        fastbp.compile(step)(*batches((8, 20), 5, np.float32, n=1)[0])
    # outside a capture the same reads work
    loss = nn.functional.cross_entropy(model(batches((8, 20), 5, np.float32, n=1)[0][0]),
                                       batches((8, 20), 5, np.float32, n=1)[0][1])
    assert isinstance(loss.item(), float)


def test_data_dependent_constant_falls_back_to_eager():
    """A value computed in NumPy from the input (not by a kernel) becomes a constant of the capture; a check
    capture on different input values sees it change and the step then runs eagerly, with a warning."""
    model, opt, _ = make_step()

    def step(x, y):
        opt.zero_grad()
        scale = fastbp.tensor(np.float32(1.0) / np.abs(x.data).max())  # data-dependent, outside the kernels
        loss = nn.functional.cross_entropy(model(x * scale), y)
        loss.backward()
        opt.step()
        return loss
    run = fastbp.compile(step)
    data = batches((8, 20), 5, np.float32)
    run(*data[0])
    run(*data[0])  # same values: not yet checked, runs eagerly
    with pytest.warns(fastbp.CaptureWarning, match="depend on the data"):
        run(*data[1])
    assert list(run.captures().values())[0].startswith("eager")

    # and the parameters still follow eager exactly
    model2 = mlp(np.float32)
    opt2 = optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    for x, y in (data[0], data[0], data[1]):
        opt2.zero_grad()
        s = fastbp.tensor(np.float32(1.0) / np.abs(x.data).max())
        nn.functional.cross_entropy(model2(x * s), y).backward()
        opt2.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert np.array_equal(a.data, b.data)


def test_lbfgs_is_a_clear_error():
    model = mlp(np.float32)
    opt = optim.LBFGS(model.parameters())
    x, y = batches((8, 20), 5, np.float32, n=1)[0]

    def step(x, y):
        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss
        return opt.step(closure)
    with pytest.raises(fastbp.CaptureError, match="LBFGS"):
        fastbp.compile(step)(x, y)


def test_replaced_parameter_array_recaptures():
    model, opt, step = make_step()
    run = fastbp.compile(step)
    data = batches((8, 20), 5, np.float32)
    for i in range(3):
        run(*data[i])
    p = next(model.parameters())
    p.data = p.data.copy()  # a new array: the capture's guard sees it and captures again
    before = p.data.copy()
    run(*data[3])
    assert not np.array_equal(p.data, before)
    assert_replayed(run)


def test_replay_source_is_flat():
    _, _, step = make_step()
    run = fastbp.compile(step)
    for x, y in batches((8, 20), 5, np.float32, n=3):
        run(x, y)
    (src,) = run.replay_source()
    assert "for " not in src and "while " not in src and "out=" in src


def _measure(run, data, steps=100):
    for i in range(5):
        run(*data[i % len(data)])
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for i in range(steps):
            run(*data[i % len(data)])
        f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start, (f1 - f0) / steps


def test_steady_state_allocations():
    """Across 100 replayed steps of an MLP 784-256-128-10 step at batch 64, the traced peak stays below
    32 KiB (the returned loss, the cross-entropy's small per-row arrays and Python call frames; eager
    allocates every activation and gradient, about 1 MiB) and there are no minor page faults per step."""
    fastbp.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    _, _, step = make_step(model, lr=0.01)
    data = batches((64, 784), 10, np.float32)
    eager_peak, _ = _measure(step, data)
    peak, faults = _measure(fastbp.compile(step), data)
    assert eager_peak > 500_000
    assert peak < 32 * 1024, peak
    assert faults < 1.0, faults


# ----- the out= parameter of the kernels ----------------------------------------------------------------
def _kernel_cases(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7)).astype(dtype)
    w = rng.standard_normal((3, 7)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    g = rng.standard_normal((5, 3)).astype(dtype)
    img = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
    cw = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    gy = rng.standard_normal((2, 4, 6, 6)).astype(dtype)
    labels = rng.integers(0, 3, 5)
    return [
        ("linear_forward", (x, w, b)),
        ("linear_backward", (g, x, w)),
        ("relu_forward", (x,)),
        ("relu_backward", (x, x)),
        ("sigmoid_forward", (x,)),
        ("sigmoid_backward", (x, x)),
        ("tanh_forward", (x,)),
        ("tanh_backward", (x, x)),
        ("conv2d_forward", (img, cw, None)),
        ("conv2d_backward", (gy, img, cw)),
        ("max_pool2d_forward", (img, 2)),
        ("cross_entropy_backward", (np.asarray(1.0, dtype), g, labels,
                                    np.log(np.exp(g.astype(np.float64)).sum(1)).astype(dtype))),
    ]


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_write_into_out(backend, dtype):
    from fastbp import _backend
    table = _backend._BACKENDS[backend]
    for name, args in _kernel_cases(dtype):
        fn = getattr(table, name)
        ref = fn(*args)
        if isinstance(ref, tuple):
            out = tuple(np.full_like(r, 7) for r in ref)
            got = fn(*args, out=out)
            for r, o, gt in zip(ref, out, got):
                assert gt is o and np.array_equal(r, o), name
        else:
            out = np.full_like(ref, 7)
            got = fn(*args, out=out)
            assert got is out and np.array_equal(ref, out), name
    g = np.ones((2, 3, 4, 4), dtype)
    _, ind = table.max_pool2d_forward(np.arange(2 * 3 * 8 * 8, dtype=dtype).reshape(2, 3, 8, 8), 2)
    out = np.full((2, 3, 8, 8), 7, dtype)
    assert table.max_pool2d_backward(g, ind, (2, 3, 8, 8), out=out) is out
    assert np.array_equal(out, table.max_pool2d_backward(g, ind, (2, 3, 8, 8)))


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_bad_out_is_a_clear_error(backend):
    from fastbp import _backend
    table = _backend._BACKENDS[backend]
    x = np.ones((5, 7), np.float32)
    w = np.ones((3, 7), np.float32)
    with pytest.raises(ValueError, match="shape"):
        table.linear_forward(x, w, None, out=np.empty((5, 4), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        table.linear_forward(x, w, None, out=np.empty((5, 3), np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        table.linear_forward(x, w, None, out=np.empty((3, 5), np.float32).T)
    with pytest.raises(TypeError):
        table.linear_forward(x, w, None, out=[[0.0] * 3] * 5)
    with pytest.raises(ValueError, match="shape"):
        table.relu_forward(x, out=np.empty(35, np.float32))
    with pytest.raises(TypeError):
        table.linear_backward(np.ones((5, 3), np.float32), x, w, out=np.empty((5, 7), np.float32))
    if backend == "compiled":
        big = np.ones((5, 7), np.float32)
        with pytest.raises(ValueError, match="overlaps"):
            table.linear_forward(big, np.ones((7, 7), np.float32), None, out=big)


def test_tuple_return_and_a_constant_made_each_call():
    """A step returning (loss, logits), whose forward adds an array made afresh (same values) at every call
    (NumPy arithmetic: recorded as a whole Function): the check capture on other inputs confirms the
    constant, then the step replays with eager's bits."""
    data = batches((8, 20), 5, np.float32)
    results = []
    for compiled in (False, True):
        model = mlp(np.float32)
        opt = optim.Adam(model.parameters(), lr=1e-3)

        def step(x, y):
            opt.zero_grad()
            logits = model(x) + fastbp.tensor(np.linspace(0, 1, 5, dtype=np.float32))
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            return loss, logits
        run = fastbp.compile(step) if compiled else step
        outs = [run(*data[i % 4]) for i in range(6)]
        assert all(isinstance(o, tuple) and len(o) == 2 for o in outs)
        results.append(([o[0].data.copy() for o in outs] + [o[1].data.copy() for o in outs],
                        [p.data.copy() for p in model.parameters()]))
        if compiled:
            states = list(run.captures().values())
    assert states == ["ready"]
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        assert np.array_equal(a, b)


def test_capture_in_one_thread_does_not_disturb_eager_in_another():
    import threading
    model, opt, step = make_step()
    run = fastbp.compile(step)
    data = batches((8, 20), 5, np.float32)
    other = mlp(np.float32)
    errors = []

    def eager():
        try:
            for _ in range(50):
                v = nn.functional.cross_entropy(other(data[0][0]), data[0][1])
                v.backward()
                float(v.item())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    t = threading.Thread(target=eager)
    t.start()
    for i in range(10):
        run(*data[i % 4])
    t.join()
    assert not errors
    assert_replayed(run)


def test_residual_block_with_numpy_ops_same_bits():
    """Residual adds, a mean, a multiplication by a scalar (NumPy-level Functions, recorded whole) and a
    tensor used twice (its gradients accumulated by the engine) replay with eager's bits."""
    data = batches((8, 20), 5, np.float64)
    results = []
    for compiled in (False, True):
        fastbp.manual_seed(0)
        a, b, head = nn.Linear(20, 20).double(), nn.Linear(20, 20).double(), nn.Linear(20, 5).double()
        params = list(a.parameters()) + list(b.parameters()) + list(head.parameters())
        opt = optim.RMSprop(params, lr=1e-3)

        def step(x, y):
            opt.zero_grad()
            h = nn.functional.relu(a(x))
            h = h + b(h) * 0.5
            loss = nn.functional.cross_entropy(head(h), y) + (h * h).mean() * 1e-3
            loss.backward()
            opt.step()
            return loss
        run = fastbp.compile(step) if compiled else step
        losses = [run(*data[i % 4]).data.copy() for i in range(6)]
        results.append(losses + [p.data.copy() for p in params])
        if compiled:
            assert_replayed(run)
    for u, v in zip(*results):
        assert np.array_equal(u, v)


# ----- fusions ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fusions_counted_and_same_bits(name):
    """The MLP's Linear-ReLU pair runs as one kernel (Linear-Tanh does not) and cross-entropy's forward
    and backward as one; the comparisons above already run with fusion on (the default)."""
    data = batches((8, 20), 5, np.float32)
    cap = train(lambda: mlp(np.float32), OPTIMIZERS[name], data, 5, compiled=True)
    assert cap[3].fusions() == [{"relu in linear_forward": 1, "cross-entropy forward+backward": 1,
                                 "relu in batch_norm forward": 0, "relu in batch_norm backward": 0}]
    eager = train(lambda: mlp(np.float32), OPTIMIZERS[name], data, 5, compiled=False)
    assert_same_bits(eager, cap)


def test_fuse_false_replays_kernel_by_kernel():
    data = batches((8, 20), 5, np.float32)
    _, _, step = make_step()
    run = fastbp.compile(step, fuse=False)
    for i in range(3):
        run(*data[i])
    assert run.fusions() == [{"relu in linear_forward": 0, "cross-entropy forward+backward": 0,
                              "relu in batch_norm forward": 0, "relu in batch_norm backward": 0}]
    assert "activation=" not in run.replay_source()[0] and "cross_entropy_fused" not in run.replay_source()[0]


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_relu_epilogue_not_used_when_the_pre_activation_is_returned(backend):
    data = batches((8, 20), 5, np.float64)
    results = []
    with fastbp.backend(backend):
        for compiled in (False, True):
            fastbp.manual_seed(0)
            lin1, lin2 = nn.Linear(20, 16).double(), nn.Linear(16, 5).double()
            opt = optim.SGD(list(lin1.parameters()) + list(lin2.parameters()), lr=0.1)

            def step(x, y):
                opt.zero_grad()
                z = lin1(x)
                loss = nn.functional.cross_entropy(lin2(z.relu()), y)
                loss.backward()
                opt.step()
                return loss, z
            run = fastbp.compile(step) if compiled else step
            outs = [tuple(t.data.copy() for t in run(*data[i % 4])) for i in range(5)]
            results.append(outs + [p.data.copy() for p in list(lin1.parameters()) + list(lin2.parameters())])
            if compiled:
                assert run.fusions()[0]["relu in linear_forward"] == 0
    for a, b in zip(*results):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert np.array_equal(x, y)


class _Block(nn.Module):
    """A residual block as in examples/resnet_mnist.py: conv-BN-ReLU, conv-BN, the sum, a ReLU."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        return nn.functional.relu(self.bn2(self.conv2(out)) + x)


def small_resnet(dtype, width=4, hw=9):
    """hw * hw >= 8: BatchNorm's plane path; < 8: its row path (norm.pyx's PLANE_MIN)."""
    fastbp.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), _Block(width),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
    return m.double() if dtype == np.float64 else m


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hw", [9, 2])
@pytest.mark.parametrize("opt", ["sgd_momentum", "adam"])
def test_batchnorm_relu_fused_same_bits(opt, hw, dtype):
    """Both BatchNorm-ReLU pairs (the stem's and the block's first) run as one batch_norm_forward and one
    batch_norm_backward each; the block's second BatchNorm feeds the sum and stays unfused."""
    data = batches((6, 1, hw, hw), 10, dtype, n=3)
    eager = train(lambda: small_resnet(dtype, hw=hw), OPTIMIZERS[opt], data, 5, compiled=False)
    cap = train(lambda: small_resnet(dtype, hw=hw), OPTIMIZERS[opt], data, 5, compiled=True)
    fused = cap[3].fusions()[0]
    assert fused["relu in batch_norm forward"] == 2 and fused["relu in batch_norm backward"] == 2
    src = cap[3].replay_source()[0]
    assert src.count("activation='relu'") == 2 and src.count("relu_output=") == 2
    assert_same_bits(eager, cap)
    assert_replayed(cap[3])


def bn_linear():
    """BatchNorm2d(3) and Linear(75, 4) in float64 with one SGD-momentum optimizer, seeded."""
    fastbp.manual_seed(0)
    bn, lin = nn.BatchNorm2d(3).double(), nn.Linear(75, 4).double()
    return bn, lin, optim.SGD(list(bn.parameters()) + list(lin.parameters()), lr=0.1, momentum=0.9)


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("returned", [False, True])
def test_batchnorm_relu_fused_when_y_is_read(backend, returned):
    """The BatchNorm's output y also feeds a penalty: the fused forward writes y as well (out=). When the
    step returns y, the pair is not fused (y must not be a buffer the next replay overwrites: the results
    are kept, not copied, until the end). Bits as eager either way."""
    data = batches((6, 3, 5, 5), 4, np.float64)
    results = []
    with fastbp.backend(backend):
        for compiled in (False, True):
            bn, lin, opt = bn_linear()

            def step(x, y):
                opt.zero_grad()
                z = bn(x)
                loss = nn.functional.cross_entropy(lin(z.relu().flatten(1)), y) + (z * z).mean() * 1e-2
                loss.backward()
                opt.step()
                return (loss, z) if returned else (loss,)
            run = fastbp.compile(step) if compiled else step
            outs = [run(*data[i % 4]) for i in range(5)]
            results.append([t.data for o in outs for t in o] +
                           [p.data.copy() for p in list(bn.parameters()) + list(lin.parameters())] +
                           [bn.running_mean.data.copy(), bn.running_var.data.copy()])
            if compiled:
                assert run.fusions()[0]["relu in batch_norm forward"] == (0 if returned else 1)
                assert ("activation='relu'" in run.replay_source()[0]) != returned
    for x, y in zip(*results):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("returned", ["bn_flat", "relu_flat", "logits_flat"])
def test_returned_views_of_kernel_outputs_are_never_replay_buffers(returned):
    """A step returns a view (flatten: a Function recorded as a whole) of an array a kernel writes: the
    BatchNorm's output (which a fused forward would write into a buffer), the ReLU's, or the Linear's. The
    returned arrays, kept without copying, must match eager and never share memory with one another."""
    rng = np.random.default_rng(0)
    data = [(fastbp.tensor(rng.standard_normal((6, 3, 5, 5))), fastbp.tensor(rng.integers(0, 4, 6)))
            for _ in range(4)]
    results = []
    for compiled in (False, True):
        bn, lin, opt = bn_linear()

        def step(x, y):
            opt.zero_grad()
            z = bn(x)
            r = z.relu()
            logits = lin(r.flatten(1))
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            return loss, {"bn_flat": z, "relu_flat": r, "logits_flat": logits}[returned].flatten(0)
        run = fastbp.compile(step) if compiled else step
        outs = [run(*data[i % 4])[1].data for i in range(5)]
        if compiled:
            assert_replayed(run)
            assert not any(np.shares_memory(a, b) for i, a in enumerate(outs) for b in outs[i + 1:])
        results.append(outs)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("options", [dict(), dict(reduction="sum"), dict(label_smoothing=0.1),
                                     dict(weight="w"), dict(reduction="none")])
def test_cross_entropy_pair_fused(options):
    """cross_entropy's forward and backward run as one cross_entropy_fused call when the loss is the
    backward's root (reduction "none" needs a gradient per row: not the seed pattern, not fused)."""
    data = batches((8, 20), 5, np.float64)
    results = []
    for compiled in (False, True):
        model = mlp(np.float64)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        kw = dict(options)
        if kw.get("weight") == "w":
            kw["weight"] = fastbp.tensor(np.linspace(0.5, 2.0, 5))

        def step(x, y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y, **kw)
            if loss.data.ndim:
                loss = loss.mean()
            loss.backward()
            opt.step()
            return loss
        run = fastbp.compile(step) if compiled else step
        losses = [run(*data[i % 4]).data.copy() for i in range(6)]
        results.append(losses + [p.data.copy() for p in model.parameters()])
        if compiled:
            assert_replayed(run)
            assert run.fusions()[0]["cross-entropy forward+backward"] == (0 if kw.get("reduction") == "none" else 1)
    for a, b in zip(*results):
        assert np.array_equal(a, b)
