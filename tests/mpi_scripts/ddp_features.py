"""Run under `mpiexec -n 2` (or -n 1): checks of fastbp.distributed that need several processes. Every check
is an assert; a failure raises, which aborts the job (non-zero exit) with the traceback. Prints "ok" lines.
argv[1]: a directory for the checkpoint file."""
import os
import sys

import numpy as np

import fastbp
import fastbp.distributed as dist
from fastbp import nn, optim


class WithBuffer(nn.Module):
    """A model with a buffer (running statistics kept outside the parameters)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.unused = nn.Linear(2, 2)  # never called: its gradients stay None
        self.stats = np.full(4, float(dist.get_rank() + 1))

    def named_buffers(self):
        yield "stats", self.stats

    def forward(self, x):
        return self.fc(x)


def check(cond, what):
    assert cond, what
    dist.print0(f"ok {what}", file=sys.stdout)


def main():
    tmpdir = sys.argv[1]
    dist.init(timeout=60)
    rank, world = dist.get_rank(), dist.get_world_size()
    check(dist.is_initialized() and 0 <= rank < world, "rank and world size")
    local = dist.get_local_world_size()
    check(0 <= dist.get_local_rank() < local <= world, "local rank and size")
    n = dist.threads_per_rank()
    check(1 <= n <= max(1, (os.cpu_count() or 1) // local) or n == len(os.sched_getaffinity(0)),
          "threads_per_rank fits the cores")
    dist.barrier()

    # all_reduce of numbers, arrays and tensors
    check(dist.all_reduce(rank + 1) == world * (world + 1) // 2, "all_reduce of an int")
    check(dist.all_reduce(float(rank), op="avg") == (world - 1) / 2, "all_reduce avg of a float")
    a = np.array([rank, -rank], dtype=np.float32)
    dist.all_reduce(a, op=dist.ReduceOp.MAX)
    check(a.tolist() == [world - 1, 0], "all_reduce max of an array, in place")
    t = fastbp.tensor(np.ones(3))
    check(dist.all_reduce(t) is t and np.all(t.data == world), "all_reduce of a Tensor, in place")
    b = np.arange(3.0) * (rank + 1)
    dist.broadcast(b, src=world - 1)
    check(np.array_equal(b, np.arange(3.0) * world), "broadcast from the last rank")
    for bad, exc, what in [(True, TypeError, "a bool"), (np.ones(4)[::2], ValueError, "a non-contiguous array"),
                           ("x", TypeError, "a string"), (np.array(["a"]), TypeError, "a string array")]:
        try:
            dist.all_reduce(bad)
            check(False, f"all_reduce of {what} raises")
        except exc:
            check(True, f"all_reduce of {what} raises {exc.__name__}")
    try:
        dist.all_reduce(1.0, op="median")
        check(False, "an unknown op raises")
    except ValueError as e:
        check("unknown reduce op" in str(e), "an unknown op raises ValueError")
    try:
        dist.broadcast(np.zeros(2), src=world)
        check(False, "broadcast from a rank that does not exist raises")
    except ValueError as e:
        check("src must be a rank" in str(e), "broadcast from a rank that does not exist raises ValueError")
    dist.check_same(7, "a constant")
    try:
        dist.check_same(rank, "the rank")
        check(world == 1, "check_same of the rank passes only on one rank")
    except ValueError as exc:
        check("the rank differs across ranks" in str(exc) and "rank 1: 1" in str(exc), "check_same names the values")

    # buffers and parameters from rank 0 at wrap time; unused parameters keep grad None
    fastbp.manual_seed(rank)
    m = WithBuffer()
    ddp = dist.DistributedDataParallel(m, bucket_cap_mb=1e-5)
    check(np.all(m.stats == 1.0), "rank 0's buffer broadcast at wrap time")
    m.stats[:] = 10.0 * (rank + 1)  # e.g. running statistics that drifted apart
    ddp(fastbp.tensor(np.zeros((1, 3), np.float32)))
    check(np.all(m.stats == 10.0), "buffers follow rank 0's before each training forward pass")
    ddp.eval()
    m.stats[:] = 10.0 * (rank + 1)
    ddp(fastbp.tensor(np.zeros((1, 3), np.float32)))
    check(np.all(m.stats == 10.0 * (rank + 1)), "not in eval mode")
    m.stats[:] = 1.0
    ddp.train()
    w0 = m.fc.weight.data.copy()
    dist.broadcast(w0, src=0)
    check(np.array_equal(w0, m.fc.weight.data), "rank 0's parameters broadcast at wrap time")
    fastbp.manual_seed(rank)
    frozen = nn.Linear(2, 2)
    frozen.weight.requires_grad_(False)
    dist.DistributedDataParallel(frozen)
    wf = frozen.weight.data.copy()
    dist.broadcast(wf, src=0)
    check(np.array_equal(wf, frozen.weight.data), "frozen parameters are broadcast at wrap time too")
    check(list(ddp.state_dict())[0].startswith("module."), "state_dict keys carry PyTorch's module. prefix")
    x = np.random.default_rng(rank).standard_normal((4, 3)).astype(np.float32)
    loss = ddp(fastbp.tensor(x)).sum()
    loss.backward()
    check(m.unused.weight.grad is None and m.unused.bias.grad is None, "parameters unused on every rank keep grad None")
    # reference: the average of the local gradients, computed by hand
    g_local = np.tile(x.sum(axis=0), (2, 1))  # d(sum(x W^T + b))/dW
    dist.all_reduce(g_local, op="avg")
    check(np.allclose(m.fc.weight.grad, g_local, rtol=1e-6), "gradients averaged across ranks")

    # no_sync: two local backward passes, then one synchronized pass == average of the three sums
    ddp.zero_grad()
    xs = [np.random.default_rng(10 * rank + k).standard_normal((2, 3)).astype(np.float32) for k in range(3)]
    with ddp.no_sync():
        for k in range(2):
            ddp(fastbp.tensor(xs[k])).sum().backward()
    calls = ddp.stats["allreduce_calls"]
    local_acc = m.fc.weight.grad.copy()
    check(np.allclose(local_acc, np.tile(xs[0].sum(0) + xs[1].sum(0), (2, 1)), rtol=1e-6),
          "no_sync keeps gradients local")
    ddp(fastbp.tensor(xs[2])).sum().backward()
    want = np.tile(sum(v.sum(0) for v in xs), (2, 1))
    dist.all_reduce(want, op="avg")
    check(np.allclose(m.fc.weight.grad, want, rtol=1e-5), "the first backward after no_sync averages the sum")
    if world == 1:
        check(ddp.stats["allreduce_calls"] == 0, "one rank: no communication at all")
    else:
        check(ddp.stats["allreduce_calls"] > calls, "the synchronized pass communicated")

    # a parameter used on rank 0 only: averaged with zeros from the others
    ddp.zero_grad()
    out = ddp(fastbp.tensor(np.ones((1, 3), np.float32)))
    if rank == 0:
        out = m.unused(out)
    out.sum().backward()
    check(m.unused.bias.grad is not None and np.allclose(m.unused.bias.grad, 1.0 / world),
          "a parameter used on one rank only is averaged with zeros")

    # mismatched models fail at wrap time on every rank, with the parameter named
    bad = nn.Linear(3, 2 + rank)
    try:
        dist.DistributedDataParallel(bad)
        check(world == 1, "a mismatched model wraps only with one rank")
    except ValueError as exc:
        check("weight: shape (2, 3)" in str(exc) and "weight: shape (3, 3)" in str(exc),
              "mismatched parameter shapes raise at wrap time naming both")

    # checkpoints: rank 0 writes (no pickle), every rank loads
    fastbp.manual_seed(5)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    dnet = dist.DistributedDataParallel(net)
    opt = optim.Adam(dnet.parameters(), lr=1e-2)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for k in range(3):
        opt.zero_grad()
        dnet(fastbp.tensor(xs[k])).sum().backward()
        opt.step()
        sched.step()
    path = os.path.join(tmpdir, "ckpt.npz")
    dist.save_checkpoint(path, dnet, opt, sched, epoch=3, best=0.5, tag="x")
    check(os.path.exists(path) and not [f for f in os.listdir(tmpdir) if f.endswith(".tmp")],
          "save_checkpoint writes one file, atomically")
    fastbp.manual_seed(99)
    net2 = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt2 = optim.Adam(net2.parameters(), lr=1.0)
    sched2 = optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    extra = dist.load_checkpoint(path, net2, opt2, sched2)
    check(extra == {"epoch": 3, "best": 0.5, "tag": "x"}, "load_checkpoint returns the extra values")
    check(all(np.array_equal(a.data, b.data) for a, b in zip(net.parameters(), net2.parameters())),
          "load_checkpoint restores the parameters on every rank")
    check(opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] and sched2.last_epoch == sched.last_epoch,
          "load_checkpoint restores optimizer and scheduler")
    try:
        dist.load_checkpoint(os.path.join(tmpdir, "missing.npz"), net2)
        check(False, "a missing checkpoint raises")
    except (RuntimeError, FileNotFoundError) as exc:
        check("missing.npz" in str(exc), "a missing checkpoint raises on every rank, naming the file")

    # L-BFGS calls backward several times per step through its closure: each pass is averaged
    fastbp.manual_seed(7)
    lin = dist.DistributedDataParallel(nn.Linear(3, 1))
    lbfgs = optim.LBFGS(lin.parameters(), lr=0.5, max_iter=5)
    xl = np.random.default_rng(rank).standard_normal((6, 3)).astype(np.float32)

    def closure():
        lbfgs.zero_grad()
        loss = (lin(fastbp.tensor(xl.astype(lin.module.weight.dtype))) ** 2).mean()
        loss.backward()
        return loss

    lbfgs.step(closure)
    wl = lin.module.weight.data.copy()
    dist.broadcast(wl, src=0)
    check(np.array_equal(wl, lin.module.weight.data), "L-BFGS steps stay identical across ranks")
    lin.module.double()
    try:
        closure()
        check(world == 1, "a dtype change after wrapping passes only with one rank")
    except RuntimeError as exc:
        check("convert the model" in str(exc), "a dtype change after wrapping is named")

    # a backward pass that fails part-way (after some buckets left) and is caught on every rank: the next
    # pass completes the stale reductions first and averages correctly
    class Boom(fastbp.Function):
        @staticmethod
        def forward(ctx, x):
            return x.copy()

        @staticmethod
        def backward(ctx, g):
            raise ArithmeticError("boom in backward")

    fastbp.manual_seed(3)
    seq = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    dseq = dist.DistributedDataParallel(seq, bucket_cap_mb=1e-5)
    xb = fastbp.tensor(np.random.default_rng(rank).standard_normal((5, 3)).astype(np.float32))
    try:
        seq[1](Boom.apply(seq[0](xb))).sum().backward()
    except ArithmeticError:
        pass
    check(world == 1 or len(dseq._pending) > 0, "a failing pass leaves reductions in flight")
    seq.zero_grad()
    dseq(xb).sum().backward()
    clone = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    clone.load_state_dict(seq.state_dict())
    clone(xb).sum().backward()
    ok = True
    for p, q in zip(seq.parameters(), clone.parameters()):
        want = np.ascontiguousarray(q.grad)
        dist.all_reduce(want, op="avg")
        ok = ok and np.allclose(p.grad, want, rtol=1e-5, atol=1e-6)
    check(ok, "after an interrupted pass the next one averages correctly")

    # the sampler's defaults come from the process group
    s = dist.DistributedSampler(11)
    idx = np.asarray(s.indices())
    every = np.empty((world, len(idx)), dtype=np.int64)
    every[rank] = idx
    for r in range(world):
        dist.broadcast(every[r], src=r)
    check(len(s) == -(-11 // world) and np.array_equal(np.sort(np.unique(every)), np.arange(11)),
          "DistributedSampler shards cover the data set")
    # another communicator: each rank alone in its own, so a world of one where nothing is communicated
    from mpi4py import MPI
    dist.init()  # again, the same communicator: a no-op
    try:
        dist.init(MPI.COMM_SELF)
        check(False, "init() with another communicator raises")
    except RuntimeError as exc:
        check("already initialized" in str(exc), "init() with another communicator raises")
    dist.destroy_process_group()
    check(not dist.is_initialized(), "destroy_process_group leaves the group")
    dist.init(MPI.COMM_WORLD.Split(color=rank, key=0))
    check(dist.get_world_size() == 1 and dist.get_rank() == 0, "init() on a communicator the user passes")
    solo = dist.DistributedDataParallel(nn.Linear(2, 2))
    solo(fastbp.tensor(np.ones((1, 2), np.float32))).sum().backward()
    check(solo.stats["allreduce_calls"] == 0, "a world of one communicates nothing")
    dist.print0("all checks passed")


if __name__ == "__main__":
    main()
