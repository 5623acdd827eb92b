"""Chunk boundaries must not depend on how the input arrives (block size, short reads)."""

from __future__ import annotations

import io
import random
from concurrent.futures import Future

import pytest

from stackvault.repo import archiver
from stackvault.repo.crypto import TEST_KDF
from stackvault.repo.repository import Repository
from stackvault.storage.memory import MemoryStorage


class TrickleReader(io.RawIOBase):
    """A pipe-like stream that returns short reads of random sizes."""

    def __init__(self, data: bytes, seed: int) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.rng = random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), len(self.data) - self.pos, self.rng.randint(1, 300_000))
        b[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


@pytest.mark.parametrize("block", [200_000, 1 << 20, 8 << 20])
def test_chunks_independent_of_read_block(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    repo = Repository.init(MemoryStorage(), "pw", kdf=TEST_KDF,
                           chunker={"min": 16 << 10, "avg": 64 << 10, "max": 256 << 10})
    rng = random.Random(1)
    data = b"".join(rng.randbytes(rng.randint(1, 50_000)) * rng.randint(1, 4)
                    for _ in range(120))
    expected = [bytes(c.data) for c in archiver.make_chunker(repo).cut_buf(data)]
    assert len(expected) > 10

    monkeypatch.setattr(archiver, "READ_BLOCK", block)
    seen: list[bytes] = []

    class Recorder:
        def save(self, _type: int, chunk: memoryview) -> Future[bytes]:
            seen.append(bytes(chunk))
            done: Future[bytes] = Future()
            done.set_result(b"")
            return done

    arch = archiver.Archiver(repo, Recorder())  # type: ignore[arg-type]
    _futures, size = arch._chunk_stream(TrickleReader(data, seed=block))  # type: ignore[arg-type]
    assert size == len(data)
    assert seen == expected
