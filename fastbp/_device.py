"""fastbp.device: fastbp runs on the CPU only. device("cpu") (or "cpu:0") exists so that PyTorch code such as
`x.to(device)` and `fastbp.zeros(3, device="cpu")` runs; any other device is a ValueError."""


class device:
    """A device, as torch.device; only "cpu" exists. Equal to the string "cpu" and to other cpu devices."""

    __slots__ = ("type", "index")

    def __new__(cls, type="cpu", index=None):
        if isinstance(type, device):
            return type
        if isinstance(type, int) and not isinstance(type, bool):
            raise ValueError(f"device {type} (an accelerator ordinal): fastbp is a CPU library, the only device is "
                             f"'cpu'")
        if not isinstance(type, str):
            raise TypeError(f"device must be a string such as 'cpu' or a fastbp.device, got {type.__class__.__name__}")
        name, _, idx = type.partition(":")
        if name != "cpu":
            raise ValueError(f"unknown device {type!r}: fastbp is a CPU library, the only device is 'cpu'")
        if idx:
            if index is not None:
                raise ValueError(f"device {type!r} given with a separate index {index!r}")
            index = idx
        if index is not None:
            try:
                index = int(index)
            except (TypeError, ValueError):
                raise ValueError(f"device index must be an int, got {index!r}") from None
            if index != 0:
                raise ValueError(f"device 'cpu:{index}' does not exist: fastbp is a CPU library with one device, 'cpu'")
        self = object.__new__(cls)
        self.type = "cpu"
        self.index = index
        return self

    def __repr__(self):
        return "device(type='cpu')" if self.index is None else f"device(type='cpu', index={self.index})"

    def __str__(self):
        return "cpu" if self.index is None else f"cpu:{self.index}"

    def __eq__(self, other):
        if isinstance(other, str):
            try:
                other = device(other)
            except (TypeError, ValueError):
                return False
        return isinstance(other, device)

    def __hash__(self):
        return hash("cpu")

    def __reduce__(self):
        return (device, ("cpu", self.index))


CPU = device("cpu")


def check_device(dev):
    """None or a cpu device (string or fastbp.device); anything else raises ValueError/TypeError."""
    if dev is not None and dev is not CPU:
        device(dev)
