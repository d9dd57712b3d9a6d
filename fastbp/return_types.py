"""Named-tuple results, as torch.return_types: `values, indices = x.max(dim=1)`, or `x.max(1).indices`."""
from collections import namedtuple

max = namedtuple("max", ["values", "indices"])
min = namedtuple("min", ["values", "indices"])
sort = namedtuple("sort", ["values", "indices"])
topk = namedtuple("topk", ["values", "indices"])
