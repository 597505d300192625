from fcn_jax import host_memory


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_release_free_heap_returns_freed_pages_to_the_system():
    # 96 MiB in blocks below glibc's mmap threshold come from the heap; freed, all but the
    # last (which pins the heap's top) stay resident until the heap is trimmed.
    blocks = [bytearray(b"x" * (64 << 10)) for _ in range(1536)]
    last = blocks.pop()
    del blocks
    before = _resident_bytes()
    assert host_memory.release_free_heap()
    assert before - _resident_bytes() > 64 << 20
    assert len(last) == 64 << 10
