"""fastbp's cache of large array blocks (kernel outputs, gradients, graph temporaries).

A training step allocates and frees the same multi-megabyte arrays every step. Left to the C library,
those blocks go back to the operating system on free and come back as fresh pages, which the kernel must
map and zero on first write: on a small ResNet that was a quarter of the step's CPU time. fastbp therefore
keeps freed blocks of at least 64 KiB for reuse, like PyTorch's caching allocators. The cache is a NumPy
memory handler that fastbp installs only while one of its ops runs forward or backward (NumPy's handler is a
context variable: code outside fastbp's ops and other threads keep NumPy's default allocator), and only
arrays allocated under it are cached when freed. It never changes a result (no contents are read) and
holds at most `get_cache_limit()` bytes of free blocks (oldest go first). Without the compiled modules
there is no cache and these functions report zeros."""

try:
    from ._C import _runtime as _rt
except ImportError:  # the NumPy backend without compiled modules
    _rt = None

DEFAULT_CACHE_LIMIT = 256 << 20


def empty_cache():
    """Hand every cached free block back to the system; returns the number of bytes released."""
    return 0 if _rt is None else _rt._pool_empty()


def set_cache_limit(nbytes):
    """Most bytes of free blocks the cache keeps (0 turns caching off); empties the cache. Returns the
    previous limit."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"cache limit must be an int number of bytes, got {type(nbytes).__name__}")
    if nbytes < 0:
        raise ValueError(f"cache limit must be >= 0 bytes, got {nbytes}")
    return 0 if _rt is None else _rt._pool_set_limit(nbytes)


def get_cache_limit():
    return 0 if _rt is None else _rt._pool_stats()["limit"]


def cache_info():
    """{"cached_bytes", "cached_blocks", "limit", "hits", "misses"}: free bytes and blocks held now, the
    limit, and how many large allocations the cache served / did not serve."""
    if _rt is None:
        return {"cached_bytes": 0, "cached_blocks": 0, "limit": 0, "hits": 0, "misses": 0}
    return _rt._pool_stats()
