"""NumPy references: one module per csrc/ kernel family, same function names and signatures.

They are written to be read against the textbook formula, not for speed."""
from . import activations, gemm, losses, optim

MODULES = (gemm, activations, losses, optim)
