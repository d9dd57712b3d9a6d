"""Batch normalization, dropout, Identity and adaptive average pooling modules, PyTorch-shaped."""
import numpy as np

from .._dtype import get_default_dtype
from . import functional as F
from .module import Module, Parameter


class _BatchNorm(Module):
    """Shared by BatchNorm1d and BatchNorm2d; see BatchNorm2d."""

    _expected = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, dtype=None):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"{type(self).__name__}: num_features must be an int >= 1, got {num_features!r}")
        if momentum is not None and not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"{type(self).__name__}: momentum must be in [0, 1] or None, got {momentum!r}")
        if not float(eps) >= 0:
            raise ValueError(f"{type(self).__name__}: eps must be >= 0, got {eps!r}")
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        if self.affine:
            self.weight = Parameter(np.ones(self.num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(self.num_features, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(self.num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(self.num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            self.bias.data[...] = 0

    def _check_input(self, x):
        shape = np.shape(x.data if hasattr(x, "data") else x)
        if len(shape) not in self._expected:
            dims = " or ".join(f"{d}D" for d in self._expected)
            raise ValueError(f"{type(self).__name__}: expected {dims} input, got {len(shape)}D input of shape "
                             f"{shape}")
        if shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expected input with {self.num_features} "
                             f"channels (dimension 1), got {shape[1]} (input shape {shape})")
        if self.training and shape[0] * int(np.prod(shape[2:], dtype=np.int64)) < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {shape}")

    def forward(self, x):
        self._check_input(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.data += 1
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.data)
        batch_stats = self.training or self.running_mean is None
        use_running = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if use_running else None,
                            self.running_var if use_running else None, self.weight, self.bias, batch_stats,
                            factor, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) input over N (and L), per channel; see BatchNorm2d."""

    _expected = (2, 3)


class BatchNorm2d(_BatchNorm):
    """BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True), as PyTorch:

        y = (x - mean) / sqrt(var + eps) * weight + bias        over (N, H, W) per channel of (N, C, H, W)

    Training mode uses the batch mean and biased variance and updates the buffers running_mean and
    running_var: r = (1 - momentum) r + momentum s, with the unbiased batch variance for running_var;
    momentum=None uses the cumulative average (factor 1 / num_batches_tracked). Evaluation mode (eval())
    uses the running statistics. affine=False: no weight and bias. track_running_stats=False: no buffers,
    batch statistics in both modes. The buffers running_mean, running_var and num_batches_tracked (int64)
    are in state_dict() under PyTorch's names. One value per channel in training mode raises ValueError.
    Compiled kernels in csrc/norm.pyx (statistics summed in a fixed order: any thread count gives the same
    bits)."""

    _expected = (4,)


class Dropout(Module):
    """Dropout(p=0.5, inplace=False): in training mode zero each element with probability p and scale the rest
    by 1 / (1 - p); the identity in eval mode. inplace is accepted and computes out of place."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        self.p = F._check_p(p)
        self.inplace = bool(inplace)

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class Dropout2d(Dropout):
    """Channel-wise dropout of (N, C, H, W) (or unbatched (C, H, W)) input: whole planes are zeroed with
    probability p, the others scaled by 1 / (1 - p), in training mode; the identity in eval mode."""

    def forward(self, x):
        return F.dropout2d(x, self.p, self.training)


class Identity(Module):
    """Returns its input; accepts and ignores any constructor arguments, as PyTorch."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class AdaptiveAvgPool2d(Module):
    """Average pooling to output_size; see F.adaptive_avg_pool2d (output 1 is the global average pool; other
    sizes must divide the input size)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"
