"""fastbp.memory: the cache of large blocks behind fastbp's ops (csrc/_runtime.pyx). It must be scoped to
fastbp's own ops, bounded, releasable, and never change a result."""
import os
import threading

import numpy as np
import pytest

import fastbp
from fastbp import memory, nn

pytestmark = pytest.mark.skipif(memory._rt is None, reason="no compiled modules: no cache")


@pytest.fixture
def fresh_cache():
    limit = memory.get_cache_limit()
    memory.empty_cache()
    yield
    memory.set_cache_limit(limit)


try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # pragma: no cover (NumPy < 2 spelling)
    from numpy.core.multiarray import get_handler_name


def _handler_name(a):
    return get_handler_name(a)


def _step(model, x, y, limit=None):
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.item(), [p.grad.copy() for p in model.parameters()]


def _model():
    fastbp.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_only_fastbp_ops_allocate_from_the_cache(fresh_cache):
    before = get_handler_name()
    x = fastbp.tensor(np.random.default_rng(0).standard_normal((8, 16, 32, 32)).astype(np.float32),
                      requires_grad=True)
    y = fastbp.nn.functional.relu(x)
    assert _handler_name(y.data) == "fastbp_cache"
    y.sum().backward()
    assert _handler_name(x.grad) in ("fastbp_cache", before)
    # outside the ops NumPy's handler is unchanged, in this thread and in others
    assert get_handler_name() == before
    assert _handler_name(np.empty(1 << 20)) == before
    seen = []
    t = threading.Thread(target=lambda: seen.append(get_handler_name()))
    t.start()
    t.join()
    assert seen == [before]


def test_blocks_are_reused_bounded_and_released(fresh_cache):
    x = fastbp.tensor(np.ones((16, 16, 32, 32), np.float32))
    nbytes = x.data.nbytes
    fastbp.nn.functional.relu(x)  # the output is freed at once: its block is cached
    info = memory.cache_info()
    assert info["cached_bytes"] >= nbytes and info["cached_blocks"] >= 1
    hits = info["hits"]
    for _ in range(5):
        fastbp.nn.functional.relu(x)
    assert memory.cache_info()["hits"] >= hits + 5
    assert memory.empty_cache() >= nbytes
    assert memory.cache_info()["cached_bytes"] == 0
    # the limit bounds what is kept; the oldest blocks go first
    memory.set_cache_limit(3 * nbytes)
    outs = [fastbp.nn.functional.relu(x) for _ in range(6)]
    del outs
    info = memory.cache_info()
    assert 0 < info["cached_bytes"] <= 3 * nbytes
    memory.set_cache_limit(0)  # off: nothing is kept
    fastbp.nn.functional.relu(x)
    assert memory.cache_info()["cached_bytes"] == 0


def test_results_do_not_depend_on_the_cache(fresh_cache):
    rng = np.random.default_rng(1)
    x = fastbp.tensor(rng.standard_normal((8, 3, 20, 20)).astype(np.float32))
    y = rng.integers(0, 10, 8)
    runs = []
    for limit in (0, 256 << 20):
        memory.set_cache_limit(limit)
        model = _model()
        runs.append([_step(model, x, y) for _ in range(3)])
    for (l0, g0), (l1, g1) in zip(*runs):
        assert l0 == l1
        for a, b in zip(g0, g1):
            np.testing.assert_array_equal(a, b)


def test_arrays_freed_in_other_threads_and_after_the_limit_changes(fresh_cache):
    x = fastbp.tensor(np.ones((8, 16, 32, 32), np.float32))
    outs = [fastbp.nn.functional.relu(x).data for _ in range(8)]
    memory.set_cache_limit(1 << 20)  # smaller than each block: freeing them releases them

    def drop(items):
        while items:
            items.pop()

    threads = [threading.Thread(target=drop, args=(outs[i::2],)) for i in range(2)]
    outs = None
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert memory.cache_info()["cached_bytes"] <= 1 << 20
    # resizing (realloc) of a cached array keeps its contents
    memory.set_cache_limit(256 << 20)
    a = fastbp.nn.functional.relu(x).data.reshape(-1).copy()
    b = fastbp.nn.functional.relu(x).data.reshape(-1)
    b = np.array(b)  # a plain copy outside the ops
    b.resize(3 * b.size, refcheck=False)
    np.testing.assert_array_equal(b[:a.size], a)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_cache_works_in_a_forked_child(fresh_cache):
    x = fastbp.tensor(np.ones((8, 16, 32, 32), np.float32))
    fastbp.nn.functional.relu(x)
    pid = os.fork()
    if pid == 0:  # child: allocate, free, empty; exit status says whether it worked
        ok = False
        try:
            y = fastbp.nn.functional.relu(x)
            ok = float(y.data.sum()) == x.data.size
            del y
            memory.empty_cache()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_bad_limits():
    with pytest.raises(ValueError):
        memory.set_cache_limit(-1)
    with pytest.raises(TypeError):
        memory.set_cache_limit(1.5)


def test_a_users_function_keeps_numpys_allocator(fresh_cache):
    before = get_handler_name()

    class Twice(fastbp.Function):
        @staticmethod
        def forward(ctx, x):
            return np.multiply(x, 2.0)

        @staticmethod
        def backward(ctx, g):
            return np.multiply(g, 2.0)

    x = fastbp.tensor(np.ones((64, 64, 32), np.float32), requires_grad=True)
    y = Twice.apply(x)
    assert _handler_name(y.data) == before
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, np.full(x.shape, 2.0, np.float32))
