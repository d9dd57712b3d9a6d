"""Run under `mpiexec -n 2`: a job in which one rank fails. argv[1] is the failure:
raise   - rank 1 raises in its third step while rank 0 trains on
kill    - rank 1 kills itself with SIGKILL in its third step
unequal - rank 1 has fewer batches than rank 0 (init timeout 3 s)
The job must end non-zero, quickly, with the failing rank's error visible; a hang is the bug."""
import os
import signal
import sys

import numpy as np

import fastbp
import fastbp.distributed as dist
from fastbp import nn, optim


def main():
    mode = sys.argv[1]
    dist.init(timeout=3.0 if mode == "unequal" else 60.0)
    rank = dist.get_rank()
    fastbp.manual_seed(0)
    model = dist.DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))
    opt = optim.SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(rank)
    steps = 2 if (mode == "unequal" and rank == 1) else 50
    for step in range(steps):
        if step == 2 and rank == 1:
            if mode == "raise":
                raise RuntimeError("boom from rank 1 in step 2")
            if mode == "kill":
                print("rank 1 about to be killed", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        x = rng.standard_normal((4, 8)).astype(np.float32)
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(fastbp.tensor(x)), rng.integers(0, 3, 4)).backward()
        opt.step()
    print(f"rank {rank} finished {steps} steps", flush=True)


if __name__ == "__main__":
    main()
