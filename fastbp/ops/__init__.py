"""Differentiable ops (Function subclasses). `basic` holds the graph's tensor arithmetic; `nn` holds the
ops that call backend kernels (every kernel they call is in the op registry)."""
