"""NumPy references: one module per csrc/ kernel family, same function names and signatures.

They are written to be read against the textbook formula, not for speed."""
from . import activations, conv, gemm, losses, norm, optim, pool

MODULES = (gemm, activations, losses, optim, conv, pool, norm)
