"""fastbp.save / fastbp.load: pickle-free files in the safetensors format, written atomically.

The file format is safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian
header length N, N bytes of JSON header (`{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}`), then the raw little-endian bytes of every array. Loading it only parses JSON
and copies bytes: no code runs, whatever the file holds.

- A flat state dict (`model.state_dict()`: names -> arrays) is stored under its own keys, so
  `safetensors.torch.load_file(path)` gives PyTorch tensors named "0.weight", ... and fastbp reads files
  that PyTorch's `safetensors.torch.save_file` wrote (bfloat16 is widened to float32; NumPy has no bf16).
- Any other object -- nested dicts (keys str or int), lists, tuples, arrays, fastbp Tensors, numpy
  scalars, Python ints (any size), floats (incl. nan/inf), bools, None and strings -- is stored as its
  arrays under path-like names ("optimizer/state/0/exp_avg") plus a JSON description of the structure in
  the metadata entry "fastbp" (the file stays a valid safetensors file). Anything else is a TypeError
  naming where in the object it sits.

Files written by fastbp carry a CRC-32 of their structure description and data in the metadata
("fastbp_crc32"), checked on load, so flipped bytes are an error rather than wrong weights.

Writes go to a temporary file in the destination folder, are flushed and fsynced, then renamed over the
destination (and the folder fsynced): a crash at any point leaves either the old file or the new one,
never a mix. A truncated, corrupted or foreign file (e.g. a pickle or a torch.save zip) raises
`CheckpointError` (a ValueError) naming the path and what is wrong.

Why not the `safetensors` package: the format is a JSON header and raw bytes (about a hundred lines here);
writing it ourselves gives the atomic write, the nested-structure metadata and the checks with path-naming
errors in one place, and keeps fastbp's runtime dependencies at numpy/scipy. The tests check the files
against the package (and PyTorch) when they are installed."""
import json
import os
import struct
import tempfile
import zlib
from collections import OrderedDict

import numpy as np

__all__ = ["save", "load", "CheckpointError"]

_FORMAT_VERSION = "1"
_MAX_HEADER = 100 * 1024 * 1024  # the limit the reference implementation uses

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}


class CheckpointError(ValueError):
    """A file that fastbp.load cannot read: truncated, corrupted, not a fastbp/safetensors file, or a pickle."""


# ----- encoding -------------------------------------------------------------------------------------------
def _dtype_code(arr, where):
    code = _CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"fastbp.save: the array at {where or '<root>'} has dtype {arr.dtype}, which the "
                        f"format cannot store (floats, ints, uints and bool can be)")
    return code


class _Encoder:
    def __init__(self):
        self.arrays = OrderedDict()

    def add_array(self, arr, where):
        name = where or "tensor"
        k = 1
        while name in self.arrays:
            k += 1
            name = f"{where}#{k}"
        _dtype_code(arr, where)
        self.arrays[name] = arr
        return name

    def encode(self, obj, where):
        from .tensor import Tensor
        if isinstance(obj, np.generic):  # before int/float: np.float64 is a float subclass
            return {"scalar": self.add_array(np.asarray(obj), where)}
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return {"int": str(obj)} if abs(obj) >= 2**53 else obj
        if isinstance(obj, float):
            return obj if np.isfinite(obj) else {"float": repr(obj)}
        if isinstance(obj, Tensor):
            obj = obj.data
        if isinstance(obj, np.generic):
            return {"scalar": self.add_array(np.asarray(obj), where)}
        if isinstance(obj, np.ndarray):
            return {"array": self.add_array(obj, where)}
        if isinstance(obj, dict):
            items = []
            for k, v in obj.items():
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise TypeError(f"fastbp.save: dict keys must be str or int, got {type(k).__name__} "
                                    f"{k!r} at {where or '<root>'}")
                items.append([k, self.encode(v, f"{where}/{k}" if where else str(k))])
            return {"dict": items}
        if isinstance(obj, (list, tuple)):
            enc = [self.encode(v, f"{where}/{i}" if where else str(i)) for i, v in enumerate(obj)]
            return {"tuple" if isinstance(obj, tuple) else "list": enc}
        raise TypeError(f"fastbp.save: cannot store a {type(obj).__name__} (at {where or '<root>'}); only "
                        f"arrays, Tensors, numbers, strings, None and dicts/lists/tuples of them")


def _is_flat_state_dict(obj):
    from .tensor import Tensor
    return (isinstance(obj, dict) and len(obj) > 0
            and all(isinstance(k, str) and k and not k.startswith("__") for k in obj)
            and all(isinstance(v, (np.ndarray, Tensor)) for v in obj.values()))


def _serialize(obj, metadata):
    """(header bytes, list of contiguous little-endian arrays) for obj."""
    from .tensor import Tensor
    enc = _Encoder()
    meta = {"format": "pt", "fastbp_format": _FORMAT_VERSION}
    if _is_flat_state_dict(obj):
        for k, v in obj.items():
            arr = v.data if isinstance(v, Tensor) else v
            _dtype_code(arr, k)
            enc.arrays[k] = arr
        meta["fastbp"] = json.dumps({"state_dict": list(obj.keys()), "ordered": type(obj) is not dict})
    else:
        meta["fastbp"] = json.dumps({"object": enc.encode(obj, "")})
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("fastbp.save: metadata must map str to str")
            if k in meta:
                raise ValueError(f"fastbp.save: metadata key {k!r} is reserved")
            meta[k] = v
    header = {"__metadata__": meta}
    arrays = []
    offset = 0
    crc = zlib.crc32(meta["fastbp"].encode("utf-8"))
    for name, arr in enc.arrays.items():
        code = _dtype_code(arr, name)
        a = np.asarray(arr, dtype=np.dtype(_DTYPES[code]), order="C")  # (ascontiguousarray makes 0-d 1-d)
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
        crc = _crc(a, crc)
    meta["fastbp_crc32"] = str(crc)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)  # pad so the data starts 8-byte aligned
    return hb, arrays


def _crc(a, crc):
    return zlib.crc32(memoryview(a.reshape(-1)).cast("B"), crc) if a.nbytes else crc


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(obj, path, metadata=None):
    """Write `obj` (a state dict, or nested dicts/lists/tuples of arrays, Tensors, numbers, strings) to
    `path` atomically. `metadata`: extra str -> str entries for the safetensors header."""
    path = os.fspath(path)
    header, arrays = _serialize(obj, metadata)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            for a in arrays:
                if a.nbytes:
                    f.write(memoryview(a.reshape(-1)).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


# ----- decoding -------------------------------------------------------------------------------------------
def _bad(path, what):
    return CheckpointError(f"{path}: {what}")


def _read_header(f, path, size):
    head = f.read(9)
    # a safetensors header (JSON) starts with "{" right after the 8-byte length; without it, name what the
    # file looks like (the length's low bytes alone can equal a pickle's opening bytes)
    if head[8:9] != b"{":
        kind = None
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            kind = "a pickle"
        elif head[:2] == b"PK":
            kind = "a zip archive (torch.save / numpy .npz)"
        if kind is not None:
            raise _bad(path, f"this is {kind}, not a safetensors file; fastbp.load never unpickles (loading a "
                             f"pickle can run arbitrary code). Save it again as safetensors")
    if len(head) < 9:
        raise _bad(path, f"truncated or empty file ({size} bytes; a safetensors file starts with an 8-byte "
                         f"header length and a JSON header)")
    if head[8:9] != b"{":
        raise _bad(path, "not a safetensors file (no JSON header after the 8-byte length)")
    f.seek(8)
    (n,) = struct.unpack("<Q", head[:8])
    if n > _MAX_HEADER:
        raise _bad(path, f"not a safetensors file (header length {n} is implausible)")
    if 8 + n > size:
        raise _bad(path, f"truncated file: the header needs {n} bytes but only {size - 8} follow")
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(path, f"corrupted header (not valid JSON: {exc})") from None
    if not isinstance(header, dict):
        raise _bad(path, "corrupted header (not a JSON object)")
    return header, 8 + n


def _read_arrays(f, path, header, data_start, size):
    infos = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (lo, hi) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
            lo, hi = int(lo), int(hi)
        except (KeyError, TypeError, ValueError):
            raise _bad(path, f"corrupted header entry for {name!r}") from None
        if code not in _DTYPES and code != "BF16":
            raise _bad(path, f"tensor {name!r} has dtype {code!r}, which fastbp cannot read")
        itemsize = 2 if code == "BF16" else np.dtype(_DTYPES[code]).itemsize
        if any(s < 0 for s in shape) or hi - lo != int(np.prod(shape, dtype=np.int64)) * itemsize or lo < 0:
            raise _bad(path, f"corrupted header entry for {name!r}: shape {shape} of {code} does not match its "
                             f"{hi - lo} bytes")
        infos.append((lo, hi, name, code, shape))
    infos.sort()
    pos = 0
    for lo, hi, name, _, _ in infos:
        if lo != pos:
            raise _bad(path, f"corrupted header: tensor {name!r} starts at byte {lo}, expected {pos}")
        pos = hi
    if data_start + pos != size:
        if data_start + pos > size:
            raise _bad(path, f"truncated file: the header describes {pos} bytes of data but only "
                             f"{size - data_start} are there")
        raise _bad(path, f"corrupted file: {size - data_start - pos} unexpected bytes after the data")
    out = {}
    for lo, hi, name, code, shape in infos:
        f.seek(data_start + lo)
        if code == "BF16":
            raw = np.empty(shape, dtype="<u2")
            f.readinto(memoryview(raw.reshape(-1)).cast("B"))
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.empty(shape, dtype=np.dtype(_DTYPES[code]).newbyteorder("="))
            if arr.nbytes:
                got = f.readinto(memoryview(arr.reshape(-1)).cast("B"))
                if got != arr.nbytes:
                    raise _bad(path, f"truncated file while reading {name!r}")
            if not np.little_endian:  # pragma: no cover  (the file is little-endian)
                arr = arr.byteswap()
        out[name] = arr
    return out


class _Decoder:
    def __init__(self, path, arrays):
        self.path, self.arrays, self.used = path, arrays, set()

    def array(self, name):
        if not isinstance(name, str) or name not in self.arrays:
            raise _bad(self.path, f"corrupted metadata: it refers to a tensor {name!r} that is not in the file")
        self.used.add(name)
        return self.arrays[name]

    def decode(self, node):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list) or not isinstance(node, dict) or len(node) != 1:
            raise _bad(self.path, "corrupted metadata (unexpected structure)")
        (tag, v), = node.items()
        if tag == "array":
            return self.array(v)
        if tag == "scalar":
            return self.array(v)[()]
        if tag == "int":
            return int(v)
        if tag == "float":
            return float(v)
        if tag in ("list", "tuple") and isinstance(v, list):
            items = [self.decode(x) for x in v]
            return tuple(items) if tag == "tuple" else items
        if tag == "dict" and isinstance(v, list):
            out = {}
            for kv in v:
                if not (isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], (str, int))):
                    raise _bad(self.path, "corrupted metadata (bad dict entry)")
                out[kv[0]] = self.decode(kv[1])
            return out
        raise _bad(self.path, f"corrupted metadata (unknown tag {tag!r})")


def load(path):
    """Read a file written by `fastbp.save` (the object as saved: arrays come back as ndarrays) or any
    safetensors file (an OrderedDict name -> ndarray). Never executes code from the file."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"fastbp.load: no such file: {path}") from None
    with f:
        header, data_start = _read_header(f, path, size)
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise _bad(path, "corrupted header (__metadata__ is not an object)")
        arrays = _read_arrays(f, path, header, data_start, size)
    desc = meta.get("fastbp")
    if desc is None and ("fastbp_crc32" in meta or "fastbp_format" in meta):
        raise _bad(path, "corrupted metadata (written by fastbp, but its structure description is missing)")
    if desc is None:
        return OrderedDict((k, arrays[k]) for k in header if k != "__metadata__")
    if "fastbp_crc32" in meta:
        crc = zlib.crc32(str(desc).encode("utf-8"))
        for name, _ in sorted(((k, v["data_offsets"][0]) for k, v in header.items() if k != "__metadata__"),
                              key=lambda kv: kv[1]):
            crc = _crc(arrays[name], crc)  # (little-endian hosts: the array's bytes are the file's)
        if str(crc) != meta["fastbp_crc32"]:
            raise _bad(path, "corrupted file: the checksum of its contents does not match (the bytes changed "
                             "after it was written)")
    try:
        desc = json.loads(desc)
    except (TypeError, ValueError):
        raise _bad(path, "corrupted metadata (the fastbp entry is not valid JSON)") from None
    if not isinstance(desc, dict):
        raise _bad(path, "corrupted metadata (the fastbp entry is not an object)")
    if "state_dict" in desc:
        keys = desc["state_dict"]
        if not isinstance(keys, list) or sorted(keys) != sorted(arrays):
            raise _bad(path, "corrupted metadata (the key list does not match the tensors)")
        return OrderedDict((k, arrays[k]) for k in keys) if desc.get("ordered", True) else {k: arrays[k] for k in keys}
    if "object" not in desc:
        raise _bad(path, "corrupted metadata (no object description)")
    dec = _Decoder(path, arrays)
    obj = dec.decode(desc["object"])
    if len(dec.used) != len(arrays):
        raise _bad(path, "corrupted metadata (tensors in the file that it does not describe)")
    return obj
