"""The blob writer: hashes, deduplicates, compresses, encrypts and packs blobs on a thread pool."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from stackvault.errors import ObjectExists
from stackvault.repo.buffers import BufferPool
from stackvault.repo.pack import DATA, TREE, PackBuilder, PackEntry
from stackvault.repo.repository import INDEX_BATCH_ENTRIES as INDEX_FLUSH_ENTRIES
from stackvault.repo.repository import Repository, pack_name


@dataclass
class WriterStats:
    blobs_new: int = 0
    blobs_dup: int = 0
    bytes_new: int = 0  # plaintext bytes of new blobs
    bytes_stored: int = 0  # encrypted bytes of new blobs
    packs: int = 0


class BlobWriter:
    """Save blobs into a repository. Use as a context manager; ``flush`` commits the index.

    Work is bounded: at most ``max_inflight`` blobs wait for processing and at most
    ``max_uploads`` packs wait for upload, so memory stays flat whatever the input size.
    """

    def __init__(self, repo: Repository, workers: int | None = None,
                 max_uploads: int | None = None,
                 *, dedup_index: bool = True, index_new_packs: bool = True) -> None:
        """``dedup_index=False`` stores blobs even if the index knows them (prune's repack);
        ``index_new_packs=False`` leaves writing index documents to the caller, who finds
        the stored packs in ``written_packs``."""
        self.repo = repo
        if max_uploads is None:  # the storage's own hint: 1 for local disk, more for S3
            max_uploads = max(1, int(getattr(repo.storage, "parallel_uploads", 1)))
        self.dedup_index = dedup_index
        self.index_new_packs = index_new_packs
        self.written_packs: list[tuple[str, int, list[PackEntry]]] = []
        repo.load_index()
        self.workers = workers or max(2, os.cpu_count() or 2)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sv-blob")
        self._uploads = ThreadPoolExecutor(max_uploads, thread_name_prefix="sv-upload")
        self._inflight = threading.BoundedSemaphore(self.workers * 2)
        self._upload_slots = threading.BoundedSemaphore(max_uploads)
        self._lock = threading.Lock()
        self._claimed: set[bytes] = set()
        # Data packs are built in reused buffers; tree packs are usually tiny.
        self._pack_buffers = BufferPool(repo.pack_size + (4 << 20) + (1 << 16), max_uploads + 2)
        self._packers = {DATA: self._new_packer(DATA), TREE: self._new_packer(TREE)}
        self._upload_futures: list[Future[None]] = []
        self._unindexed: list[tuple[str, int, list[PackEntry]]] = []
        self._unindexed_entries = 0
        self.index_ids: list[str] = []
        self.stats = WriterStats()
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ saving
    def save(self, blob_type: int, data: bytes | memoryview) -> Future[bytes]:
        """Queue a blob; the future resolves to its id once it is deduplicated or packed."""
        self._inflight.acquire()
        try:
            fut = self._pool.submit(self._process, blob_type, data)
        except BaseException:
            self._inflight.release()
            raise
        fut.add_done_callback(lambda _f: self._inflight.release())
        return fut

    def save_now(self, blob_type: int, data: bytes | memoryview) -> bytes:
        """Save a blob on the calling thread (used for trees); return its id."""
        return self._process(blob_type, data)

    def _process(self, blob_type: int, data: bytes | memoryview) -> bytes:
        blob_id = self.repo.blob_id(data)
        if self._claim(blob_id):
            self._add(blob_type, blob_id, self.repo.codec.encode(blob_id, data), len(data))
        return blob_id

    def save_stored(self, blob_type: int, blob_id: bytes, stored: bytes, raw_length: int) -> None:
        """Add an already encoded blob (as read from another pack of this repository)."""
        if self._claim(blob_id):
            self._add(blob_type, blob_id, stored, raw_length)

    def _claim(self, blob_id: bytes) -> bool:
        """True if this blob is new and the caller must store it."""
        with self._lock:
            if (self.dedup_index and blob_id in self.repo.index) or blob_id in self._claimed:
                self.stats.blobs_dup += 1
                return False
            self._claimed.add(blob_id)
            return True

    def _add(self, blob_type: int, blob_id: bytes, stored: bytes, raw_length: int) -> None:
        repo = self.repo
        with self._lock:
            packer = self._packers[blob_type]
            packer.add(blob_id, stored, raw_length)
            self.stats.blobs_new += 1
            self.stats.bytes_new += raw_length
            self.stats.bytes_stored += len(stored)
            full = len(packer) >= repo.pack_size
            if full:
                self._packers[blob_type] = self._new_packer(blob_type)
        if full:
            self._ship(packer)

    def _new_packer(self, blob_type: int) -> PackBuilder:
        return PackBuilder(blob_type, self._pack_buffers.take() if blob_type == DATA else None)

    def _ship(self, packer: PackBuilder) -> None:
        self._check_error()
        pack_id, data, entries = packer.finish(self.repo.crypto)
        self._upload_slots.acquire()
        fut = self._uploads.submit(self._upload, pack_id, data, entries, packer.buf)
        fut.add_done_callback(lambda _f: self._upload_slots.release())
        with self._lock:
            self._upload_futures.append(fut)

    def _upload(self, pack_id: str, data: memoryview, entries: list[PackEntry],
                buf: bytearray) -> None:
        try:
            size = len(data)
            try:
                self.repo.storage.put(pack_name(pack_id), data)
            except ObjectExists:
                pass  # identical pack (same bytes) already stored
            data.release()
            if entries and entries[0].type == DATA:
                self._pack_buffers.give(buf)
            self.repo.index.add_pack(pack_id, size, entries)
            flush: list[tuple[str, int, list[PackEntry]]] = []
            with self._lock:
                self.stats.packs += 1
                self.written_packs.append((pack_id, size, entries))
                if not self.index_new_packs:
                    return
                self._unindexed.append((pack_id, size, entries))
                self._unindexed_entries += len(entries)
                if self._unindexed_entries >= INDEX_FLUSH_ENTRIES:
                    flush, self._unindexed = self._unindexed, []
                    self._unindexed_entries = 0
            if flush:
                self._write_index(flush)
        except BaseException as exc:
            self._error = exc
            raise

    def _write_index(self, packs: list[tuple[str, int, list[PackEntry]]]) -> None:
        index_id = self.repo.write_index(packs)
        with self._lock:
            self.index_ids.append(index_id)

    def _check_error(self) -> None:
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------------ committing
    def flush(self) -> None:
        """Store every partial pack, wait for all uploads, then write the index.

        When this returns, every blob saved so far is durable and indexed.
        """
        for blob_type in (DATA, TREE):
            with self._lock:
                packer = self._packers[blob_type]
                self._packers[blob_type] = self._new_packer(blob_type)
            if packer.entries:
                self._ship(packer)
            elif blob_type == DATA:
                self._pack_buffers.give(packer.buf)
        with self._lock:
            futures, self._upload_futures = self._upload_futures, []
        for f in futures:
            f.result()
        with self._lock:
            flush, self._unindexed = self._unindexed, []
            self._unindexed_entries = 0
        if flush:
            self._write_index(flush)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._uploads.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
