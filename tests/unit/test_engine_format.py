"""Repository format v1 (docs/design.md): encryption, key files, packs, blob codec, index,
config and documents, exercised through the engine's Python API on MemoryStorage."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stackvault.errors import (
    IntegrityError,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedFormat,
    UsageError,
    WrongPassword,
)
from stackvault.repo import crypto as kc
from stackvault.repo.archiver import run_backup
from stackvault.repo.check import check
from stackvault.repo.index import Index, decode_index, encode_index
from stackvault.repo.pack import (
    DATA,
    FLAG_RAW,
    FLAG_ZSTD,
    TREE,
    BlobCodec,
    PackBuilder,
    PackEntry,
    parse_header,
)
from stackvault.repo.repository import Repository, pack_name
from stackvault.repo.restorer import dump, restore
from stackvault.repo.snapshot import Snapshot, now
from stackvault.storage.memory import MemoryStorage

PW = "correct horse battery staple"
SMALL_CHUNKER = {"min": 1024, "avg": 4096, "max": 16384}
SMALL_PACK = 32 * 1024


def new_repo(password: str | None = PW, storage: MemoryStorage | None = None,
             **kw: object) -> Repository:
    kw.setdefault("kdf", kc.TEST_KDF)
    kw.setdefault("chunker", SMALL_CHUNKER)
    kw.setdefault("pack_size", SMALL_PACK)
    return Repository.init(storage or MemoryStorage(), password, **kw)


def flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[pos] ^= mask
    return bytes(b)


def replace_object(storage: MemoryStorage, name: str, data: bytes) -> None:
    storage.delete(name)
    storage.put(name, data)


TEXT = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i
                for i in range(4000))


# ==================================================================== crypto: seal / open


class TestCrypto:
    def test_seal_open_roundtrip(self) -> None:
        c = kc.Crypto(os.urandom(32))
        for msg in (b"", b"x", os.urandom(1000)):
            sealed = c.seal(msg, b"stackvault:snapshot")
            assert len(sealed) == len(msg) + kc.OVERHEAD
            assert c.open(sealed, b"stackvault:snapshot", "doc") == msg
            assert c.open(memoryview(sealed), b"stackvault:snapshot", "doc") == msg

    def test_random_nonce_every_time(self) -> None:
        c = kc.Crypto(os.urandom(32))
        a, b = c.seal(b"same", b"aad"), c.seal(b"same", b"aad")
        assert a != b
        assert a[: kc.NONCE_SIZE] != b[: kc.NONCE_SIZE]

    def test_wrong_aad_fails(self) -> None:
        c = kc.Crypto(os.urandom(32))
        sealed = c.seal(b"payload", b"stackvault:snapshot")
        with pytest.raises(IntegrityError, match="what-it-is"):
            c.open(sealed, b"stackvault:index", "what-it-is")

    def test_wrong_key_fails(self) -> None:
        sealed = kc.Crypto(os.urandom(32)).seal(b"payload", b"a")
        with pytest.raises(IntegrityError):
            kc.Crypto(os.urandom(32)).open(sealed, b"a", "x")

    @pytest.mark.parametrize("pos", [0, 5, kc.NONCE_SIZE, kc.NONCE_SIZE + 3, -1])
    def test_any_bit_flip_fails(self, pos: int) -> None:
        c = kc.Crypto(os.urandom(32))
        sealed = c.seal(b"some plaintext", b"a")
        with pytest.raises(IntegrityError):
            c.open(flip(sealed, pos % len(sealed), 0x80), b"a", "x")

    def test_too_short_fails(self) -> None:
        c = kc.Crypto(os.urandom(32))
        with pytest.raises(IntegrityError, match="too short"):
            c.open(b"\x00" * (kc.OVERHEAD - 1), b"a", "x")
        with pytest.raises(IntegrityError):
            c.open(c.seal(b"abc", b"a")[:-1], b"a", "x")

    def test_unencrypted_is_identity(self) -> None:
        c = kc.Crypto(None)
        assert not c.encrypted
        assert c.overhead() == 0
        assert c.seal(b"abc", b"x") == b"abc"
        assert c.open(memoryview(b"abc"), b"y", "z") == b"abc"
        assert kc.Crypto(os.urandom(32)).overhead() == kc.OVERHEAD


# ==================================================================== key files


class TestKeyFiles:
    def test_roundtrip_and_fields(self) -> None:
        master = os.urandom(32)
        raw = kc.make_key_file(master, "pw", kc.TEST_KDF)
        doc = kc.parse_key_file(raw, "k")
        for field in ("version", "kdf", "t", "m", "p", "salt", "data", "created",
                      "hostname", "username", "check"):
            assert field in doc
        assert doc["kdf"] == "argon2id" and doc["version"] == 1
        assert (doc["t"], doc["m"], doc["p"]) == (kc.TEST_KDF.t, kc.TEST_KDF.m, kc.TEST_KDF.p)
        assert master.hex() not in raw.decode() and kc.b64(master) not in raw.decode()
        assert kc.open_key_file(doc, "pw") == master

    def test_salt_is_random(self) -> None:
        master = os.urandom(32)
        a = json.loads(kc.make_key_file(master, "pw", kc.TEST_KDF))
        b = json.loads(kc.make_key_file(master, "pw", kc.TEST_KDF))
        assert a["salt"] != b["salt"] and a["data"] != b["data"]

    def test_wrong_password(self) -> None:
        doc = kc.parse_key_file(kc.make_key_file(os.urandom(32), "pw", kc.TEST_KDF), "k")
        with pytest.raises(WrongPassword):
            kc.open_key_file(doc, "PW")

    def test_kdf_params_come_from_the_key_file(self) -> None:
        other = kc.KdfParams(t=2, m=2048, p=2)
        master = os.urandom(32)
        doc = kc.parse_key_file(kc.make_key_file(master, "pw", other), "k")
        assert (doc["t"], doc["m"], doc["p"]) == (2, 2048, 2)
        assert kc.open_key_file(doc, "pw") == master

    @pytest.mark.parametrize("damage", ["data", "salt", "t", "check", "truncate", "garbage",
                                        "not-utf8", "list"])
    def test_damaged_key_file_is_integrity_error(self, damage: str) -> None:
        raw = kc.make_key_file(os.urandom(32), "pw", kc.TEST_KDF)
        doc = json.loads(raw)
        if damage == "data":
            sealed = bytearray(kc.unb64(doc["data"]))
            sealed[20] ^= 1
            doc["data"] = kc.b64(bytes(sealed))
            bad = json.dumps(doc).encode()
        elif damage == "salt":
            doc["salt"] = kc.b64(os.urandom(32))
            bad = json.dumps(doc).encode()
        elif damage == "t":
            doc["t"] = doc["t"] * 2
            bad = json.dumps(doc).encode()
        elif damage == "check":
            doc["check"] = "0" * 64
            bad = json.dumps(doc).encode()
        elif damage == "truncate":
            bad = raw[: len(raw) // 2]
        elif damage == "garbage":
            bad = os.urandom(200)
        elif damage == "not-utf8":
            bad = b"\xff\xfe" + raw
        else:
            bad = b"[1, 2, 3]"
        with pytest.raises(IntegrityError) as ei:
            kc.parse_key_file(bad, "keys/abc")
        assert not isinstance(ei.value, WrongPassword)
        assert "keys/abc" in str(ei.value)


class TestRepositoryKeys:
    def test_open_with_right_and_wrong_password(self) -> None:
        repo = new_repo()
        assert repo.key_name is not None and repo.key_name.startswith("keys/")
        again = Repository.open(repo.storage, PW)
        assert again.id == repo.id
        assert again.config == repo.config
        assert again.key_name == repo.key_name
        with pytest.raises(WrongPassword):
            Repository.open(repo.storage, "not the password")

    def test_password_required_for_encrypted_repo(self) -> None:
        repo = new_repo()
        with pytest.raises(UsageError):
            Repository.open(repo.storage, None)

    def test_only_key_damaged_is_integrity_error_not_wrong_password(self) -> None:
        repo = new_repo()
        name = repo.key_name
        assert name is not None
        raw = repo.storage.get(name)
        replace_object(repo.storage, name, flip(raw, len(raw) // 2, 0x02))
        for pw in (PW, "wrong"):
            with pytest.raises(IntegrityError) as ei:
                Repository.open(repo.storage, pw)
            assert not isinstance(ei.value, WrongPassword)

    def test_damaged_key_skipped_when_another_key_opens(self) -> None:
        repo = new_repo()
        repo.add_key("second", kc.TEST_KDF)
        first = repo.key_name
        assert first is not None
        replace_object(repo.storage, first, b"{broken")
        assert Repository.open(repo.storage, "second").id == repo.id
        # Which key a password was meant for is unknowable: both are reported as a wrong
        # password that names the damaged key file that was skipped.
        for pw in ("third", PW):
            with pytest.raises(WrongPassword, match="1 damaged key file"):
                Repository.open(repo.storage, pw)

    def test_several_keys(self) -> None:
        repo = new_repo()
        kid2 = repo.add_key("pw-two", kc.TEST_KDF)
        kid3 = repo.add_key("pw-three", kc.TEST_KDF)
        keys = {k["id"]: k for k in repo.list_keys()}
        assert len(keys) == 3
        assert [k["current"] for k in keys.values()].count(True) == 1
        assert keys[repo.key_name.split("/", 1)[1]]["current"]
        for pw, kid in (("pw-two", kid2), ("pw-three", kid3)):
            r = Repository.open(repo.storage, pw)
            assert r.key_name == f"keys/{kid}"
            assert r.crypto.key == repo.crypto.key  # one master key for all key files

    def test_remove_key_and_refusals(self) -> None:
        repo = new_repo()
        own = repo.key_name.split("/", 1)[1]
        with pytest.raises(UsageError, match="in use|last"):
            repo.remove_key(own)
        kid2 = repo.add_key("pw-two", kc.TEST_KDF)
        with pytest.raises(UsageError, match="in use"):
            repo.remove_key(own[:12])
        with pytest.raises(UsageError, match="matches 0"):
            repo.remove_key("zz")
        with pytest.raises(UsageError, match="matches 2"):
            repo.remove_key("")
        repo.remove_key(kid2[:10])
        assert [k["id"] for k in repo.list_keys()] == [own]
        with pytest.raises(WrongPassword):
            Repository.open(repo.storage, "pw-two")

    def test_refuse_to_remove_last_key(self) -> None:
        repo = new_repo()
        kid2 = repo.add_key("pw-two", kc.TEST_KDF)
        other = Repository.open(repo.storage, "pw-two")
        # Someone removes the first key behind our back; the remaining one is the last.
        repo.storage.delete(repo.key_name)
        assert other.key_name == f"keys/{kid2}"
        with pytest.raises(UsageError):
            other.remove_key(kid2)
        # A key that is neither in use nor the only one: from a third opener's view.
        kid3 = other.add_key("pw-three", kc.TEST_KDF)
        third = Repository.open(repo.storage, "pw-three")
        assert third.key_name == f"keys/{kid3}"
        third.remove_key(kid2)
        with pytest.raises(UsageError, match="last|in use"):
            third.remove_key(kid3)

    def test_changing_password_does_not_reencrypt_data(self, tmp_path: Path) -> None:
        repo = new_repo()
        (tmp_path / "f").write_bytes(TEXT)
        snap = run_backup(repo, paths=[str(tmp_path / "f")], hostname="h").snapshot
        before = {o.name: repo.storage.get(o.name) for o in repo.storage.list()
                  if not o.name.startswith("keys/")}
        new_id = repo.add_key("new password", kc.TEST_KDF)
        r2 = Repository.open(repo.storage, "new password")
        r2.remove_key(repo.key_name.split("/", 1)[1])
        after = {o.name: repo.storage.get(o.name) for o in repo.storage.list()
                 if not o.name.startswith("keys/")}
        assert before == after
        assert [o.name for o in repo.storage.list("keys/")] == [f"keys/{new_id}"]
        with pytest.raises(WrongPassword):
            Repository.open(repo.storage, PW)
        r3 = Repository.open(repo.storage, "new password")
        out = io.BytesIO()
        dump(r3, r3.load_snapshot(snap.id), str(tmp_path / "f"), out)
        assert out.getvalue() == TEXT

    def test_check_reports_damaged_key_file(self) -> None:
        repo = new_repo()
        kid = repo.add_key("second", kc.TEST_KDF)
        raw = repo.storage.get(f"keys/{kid}")
        replace_object(repo.storage, f"keys/{kid}", raw[:-10])
        assert Repository.open(repo.storage, PW).id == repo.id
        rep = check(repo)
        assert [p.object for p in rep.errors] == [f"keys/{kid}"]
        listed = {k["id"]: k for k in repo.list_keys()}
        assert "error" in listed[kid] and "error" not in listed[repo.key_name[5:]]

    def test_unencrypted_repo_has_no_keys(self) -> None:
        repo = new_repo(None)
        with pytest.raises(UsageError):
            repo.add_key("x", kc.TEST_KDF)


# ==================================================================== config, init, open


class TestConfig:
    def test_config_fields(self) -> None:
        repo = new_repo()
        cfg = json.loads(repo.crypto.open(repo.storage.get("config"), b"stackvault:config", "c"))
        assert cfg == repo.config
        assert cfg["version"] == 1
        assert len(bytes.fromhex(cfg["id"])) == 32
        assert len(bytes.fromhex(cfg["id_key"])) == 32
        ch = cfg["chunker"]
        assert ch["algorithm"] == "fastcdc2020"
        assert (ch["min"], ch["avg"], ch["max"]) == (1024, 4096, 16384)
        assert 0 < ch["seed"] < 2**63
        assert cfg["compression"] == {"algorithm": "zstd", "level": 3}
        assert cfg["pack_size"] == SMALL_PACK

    def test_default_config(self) -> None:
        repo = Repository.init(MemoryStorage(), PW, kdf=kc.TEST_KDF)
        ch = repo.config["chunker"]
        assert (ch["min"], ch["avg"], ch["max"]) == (256 << 10, 384 << 10, 4 << 20)
        assert repo.pack_size == 16 << 20

    def test_config_is_encrypted(self) -> None:
        repo = new_repo()
        raw = repo.storage.get("config")
        assert repo.config["id_key"].encode() not in raw
        with pytest.raises(ValueError):
            json.loads(raw)
        with pytest.raises(IntegrityError):  # a config is not a snapshot
            repo.crypto.open(raw, b"stackvault:snapshot", "x")

    def test_secrets_differ_per_repository(self) -> None:
        a, b = new_repo(), new_repo()
        assert a.config["id_key"] != b.config["id_key"]
        assert a.config["chunker"]["seed"] != b.config["chunker"]["seed"]
        assert a.id != b.id
        assert a.blob_id(b"same data") != b.blob_id(b"same data")
        assert a.blob_id(b"same data") == blake3.blake3(
            b"same data", key=bytes.fromhex(a.config["id_key"])).digest()

    def test_init_twice_refused(self) -> None:
        repo = new_repo()
        with pytest.raises(RepositoryExists):
            Repository.init(repo.storage, PW, kdf=kc.TEST_KDF)

    def test_open_missing(self) -> None:
        with pytest.raises(RepositoryNotFound):
            Repository.open(MemoryStorage(), PW)

    def test_damaged_config(self) -> None:
        repo = new_repo()
        raw = repo.storage.get("config")
        replace_object(repo.storage, "config", flip(raw, len(raw) - 3))
        with pytest.raises(IntegrityError, match="config"):
            Repository.open(repo.storage, PW)

    @pytest.mark.parametrize("encrypted", [True, False])
    def test_unsupported_format_version(self, encrypted: bool) -> None:
        repo = new_repo(PW if encrypted else None)
        cfg = dict(repo.config, version=2)
        replace_object(repo.storage, "config",
                       repo.crypto.seal(json.dumps(cfg).encode(), b"stackvault:config"))
        with pytest.raises(UnsupportedFormat, match="version 2"):
            Repository.open(repo.storage, PW if encrypted else None,
                            insecure_no_password=not encrypted)


class TestUnencrypted:
    def test_needs_insecure_flag_to_open(self) -> None:
        repo = new_repo(None)
        assert not repo.crypto.encrypted
        assert [o.name for o in repo.storage.list("keys/")] == []
        for pw in (None, PW):
            with pytest.raises(UsageError, match="not encrypted") as ei:
                Repository.open(repo.storage, pw)
            assert not isinstance(ei.value, WrongPassword)
        r = Repository.open(repo.storage, None, insecure_no_password=True)
        assert r.id == repo.id and not r.crypto.encrypted

    def test_encrypted_repo_refuses_insecure_flag(self) -> None:
        repo = new_repo()
        with pytest.raises(UsageError):
            Repository.open(repo.storage, PW, insecure_no_password=True)
        with pytest.raises(UsageError):
            Repository.open(repo.storage, None, insecure_no_password=True)

    def test_documents_are_plain_json(self, tmp_path: Path) -> None:
        repo = new_repo(None)
        assert json.loads(repo.storage.get("config"))["id"] == repo.id
        (tmp_path / "f").write_bytes(b"hello")
        snap = run_backup(repo, paths=[str(tmp_path / "f")], hostname="h").snapshot
        doc = json.loads(repo.storage.get(f"snapshots/{snap.id}"))
        assert doc["tree"] == snap.tree

    def test_downgrade_by_replacing_config_is_refused(self) -> None:
        """A provider that swaps in a plaintext config and deletes keys/ gains nothing."""
        repo = new_repo()
        forged = dict(repo.config, id_key="00" * 32)
        replace_object(repo.storage, "config", json.dumps(forged).encode())
        for o in list(repo.storage.list("keys/")):
            repo.storage.delete(o.name)
        with pytest.raises(UsageError, match="not encrypted"):
            Repository.open(repo.storage, PW)

    def test_backup_restore_roundtrip(self, tmp_path: Path) -> None:
        repo = new_repo(None)
        src = tmp_path / "src"
        src.mkdir()
        (src / "text").write_bytes(TEXT)
        (src / "rand").write_bytes(random.Random(1).randbytes(50_000))
        snap = run_backup(repo, paths=[str(src)], hostname="h").snapshot
        r = Repository.open(repo.storage, None, insecure_no_password=True)
        res = restore(r, r.load_snapshot(snap.id), str(tmp_path / "out"))
        assert not res.errors
        out = tmp_path / "out" / str(src).lstrip("/")
        assert (out / "text").read_bytes() == TEXT
        assert (out / "rand").read_bytes() == (src / "rand").read_bytes()

    def test_damaged_blob_detected(self, tmp_path: Path) -> None:
        """Without AEAD the blob id must still be verified: no silent corruption."""
        repo = new_repo(None)
        data = random.Random(2).randbytes(1000)  # < chunker min: one raw blob
        (tmp_path / "f").write_bytes(data)
        snap = run_backup(repo, paths=[str(tmp_path / "f")], hostname="h").snapshot
        bid = repo.blob_id(data)
        loc = repo.index.get(bid)
        assert loc is not None
        name = pack_name(loc.pack)
        raw = repo.storage.get(name)
        replace_object(repo.storage, name, flip(raw, loc.offset + 100))
        r = Repository.open(repo.storage, None, insecure_no_password=True)
        with pytest.raises(IntegrityError):
            r.load_blob(bid)
        res = restore(r, r.load_snapshot(snap.id), str(tmp_path / "out"))
        assert res.errors
        assert not check(r, read_data=True).ok


# ==================================================================== documents


class TestDocuments:
    def test_doc_id_is_hash_of_bytes_and_kind_is_bound(self) -> None:
        repo = new_repo()
        doc_id = repo.save_doc("snapshot", {"a": 1}, "snapshots")
        raw = repo.storage.get(f"snapshots/{doc_id}")
        assert blake3.blake3(raw).hexdigest() == doc_id
        assert repo.load_doc("snapshot", "snapshots", doc_id) == {"a": 1}
        # The same bytes presented as another kind of document fail authentication.
        repo.storage.put(f"index/{doc_id}", raw)
        with pytest.raises(IntegrityError):
            repo.load_raw_doc("index", "index", doc_id)
        repo.storage.put(f"locks/{doc_id}", raw)
        with pytest.raises(IntegrityError):
            repo.load_doc("lock", "locks", doc_id)

    def test_tampered_snapshot(self) -> None:
        repo = new_repo()
        sid = repo.save_doc("snapshot", {"a": 1}, "snapshots")
        raw = repo.storage.get(f"snapshots/{sid}")
        replace_object(repo.storage, f"snapshots/{sid}", flip(raw, 30))
        with pytest.raises(IntegrityError, match=sid):
            repo.load_doc("snapshot", "snapshots", sid)

    def test_replaced_document_with_valid_one_of_other_id(self) -> None:
        repo = new_repo()
        a = repo.save_doc("snapshot", {"a": 1}, "snapshots")
        b = repo.save_doc("snapshot", {"b": 2}, "snapshots")
        replace_object(repo.storage, f"snapshots/{a}", repo.storage.get(f"snapshots/{b}"))
        with pytest.raises(IntegrityError, match="does not match its id"):
            repo.load_doc("snapshot", "snapshots", a)

    def test_list_snapshots_reports_damaged(self) -> None:
        repo = new_repo()
        snap = Snapshot(time=now(), hostname="h", username="u", paths=["/x"], tree="00" * 32)
        good = repo.save_snapshot(snap)
        bad = repo.save_doc("snapshot", {"a": 1}, "snapshots")  # not a snapshot document
        raw = repo.storage.get(f"snapshots/{bad}")
        replace_object(repo.storage, f"snapshots/{bad}", raw[:-1])
        errors: list[tuple[str, Exception]] = []
        snaps = repo.list_snapshots(errors)
        assert [s.id for s in snaps] == [good]
        assert [e[0] for e in errors] == [bad]
        loaded = repo.load_snapshot(good)
        assert loaded.to_dict() == snap.to_dict()

    def test_save_same_doc_twice_is_fine(self) -> None:
        repo = new_repo(None)  # unencrypted: same bytes, same id
        a = repo.save_doc("snapshot", {"a": 1}, "snapshots")
        assert repo.save_doc("snapshot", {"a": 1}, "snapshots") == a


# ==================================================================== blob codec


class TestCodec:
    def payload(self, codec: BlobCodec, bid: bytes, stored: bytes) -> bytes:
        return codec.crypto.open(stored, bid, "blob")

    def test_text_is_compressed(self) -> None:
        codec = BlobCodec(kc.Crypto(os.urandom(32)))
        bid = os.urandom(32)
        stored = codec.encode(bid, TEXT)
        assert len(stored) < len(TEXT) // 3
        assert self.payload(codec, bid, stored)[0] == FLAG_ZSTD
        assert codec.decode(bid, stored, len(TEXT)) == TEXT

    @pytest.mark.parametrize("size", [100, 5000, 300_000])
    def test_random_data_is_stored_raw(self, size: int) -> None:
        codec = BlobCodec(kc.Crypto(os.urandom(32)))
        data = random.Random(size).randbytes(size)
        bid = os.urandom(32)
        stored = codec.encode(bid, data)
        assert len(stored) == size + 1 + kc.OVERHEAD
        payload = self.payload(codec, bid, stored)
        assert payload[0] == FLAG_RAW and payload[1:] == data
        assert codec.decode(bid, stored, size) == data

    def test_tiny_blobs_not_compressed(self) -> None:
        codec = BlobCodec(kc.Crypto(None))
        assert codec.compress(b"a" * 64) == b"\x00" + b"a" * 64
        assert codec.compress(b"") == b"\x00"
        assert codec.compress(b"a" * 1000)[0] == FLAG_ZSTD

    def test_compression_sample_skips_incompressible_large_blob(self) -> None:
        """The 64 KiB sample decides for large blobs: random middle, compressible rest."""
        codec = BlobCodec(kc.Crypto(None))
        n = 400_000
        data = bytearray(b"a" * n)
        mid = n // 2
        data[mid: mid + 70_000] = random.Random(0).randbytes(70_000)
        assert codec.compress(bytes(data))[0] == FLAG_RAW
        assert codec.compress(b"b" * n)[0] == FLAG_ZSTD

    def test_accepts_memoryview(self) -> None:
        codec = BlobCodec(kc.Crypto(os.urandom(32)))
        bid = os.urandom(32)
        for data in (TEXT, os.urandom(2000)):
            stored = codec.encode(bid, memoryview(data))
            assert codec.decode(bid, memoryview(stored), len(data)) == data

    def test_decode_with_wrong_id_fails(self) -> None:
        codec = BlobCodec(kc.Crypto(os.urandom(32)))
        bid = os.urandom(32)
        stored = codec.encode(bid, TEXT)
        with pytest.raises(IntegrityError, match="blob"):
            codec.decode(os.urandom(32), stored, len(TEXT))

    def test_decode_with_wrong_length_fails(self) -> None:
        codec = BlobCodec(kc.Crypto(os.urandom(32)))
        bid = os.urandom(32)
        for data in (TEXT, os.urandom(500)):
            stored = codec.encode(bid, data)
            with pytest.raises(IntegrityError):
                codec.decode(bid, stored, len(data) - 1)
            with pytest.raises(IntegrityError):
                codec.decode(bid, stored, len(data) + 1)

    def test_decode_damaged_fails(self) -> None:
        codec = BlobCodec(kc.Crypto(os.urandom(32)))
        bid = os.urandom(32)
        stored = codec.encode(bid, TEXT)
        for pos in (0, kc.NONCE_SIZE + 1, len(stored) // 2, len(stored) - 1):
            with pytest.raises(IntegrityError):
                codec.decode(bid, flip(stored, pos), len(TEXT))

    def test_unknown_flag_and_bad_frame(self) -> None:
        crypto = kc.Crypto(os.urandom(32))
        codec = BlobCodec(crypto)
        bid = os.urandom(32)
        with pytest.raises(IntegrityError, match="flag"):
            codec.decode(bid, crypto.seal(b"\x07abc", bid), 3)
        with pytest.raises(IntegrityError, match="zstd"):
            codec.decode(bid, crypto.seal(b"\x01not a zstd frame", bid), 100)

    def test_compression_level_from_config(self) -> None:
        repo = new_repo(compression_level=9)
        assert repo.codec.level == 9
        assert Repository.open(repo.storage, PW).codec.level == 9


# ==================================================================== packs


def build_pack(crypto: kc.Crypto, blobs: list[bytes], blob_type: int = DATA
               ) -> tuple[str, bytes, list[PackEntry], BlobCodec, list[bytes]]:
    codec = BlobCodec(crypto)
    pb = PackBuilder(blob_type)
    ids = []
    for data in blobs:
        bid = blake3.blake3(data).digest()
        ids.append(bid)
        pb.add(bid, codec.encode(bid, data), len(data))
    pid, view, entries = pb.finish(crypto)
    raw = bytes(view)
    return pid, raw, entries, codec, ids


class TestPack:
    def blobs(self) -> list[bytes]:
        rng = random.Random(7)
        return [rng.randbytes(rng.randrange(0, 3000)) for _ in range(5)] + [TEXT[:5000]]

    @pytest.mark.parametrize("encrypted", [True, False])
    def test_roundtrip(self, encrypted: bool) -> None:
        crypto = kc.Crypto(os.urandom(32) if encrypted else None)
        blobs = self.blobs()
        pid, raw, entries, codec, ids = build_pack(crypto, blobs, TREE)
        assert pid == blake3.blake3(raw).hexdigest()
        assert [e.id for e in entries] == ids
        parsed = parse_header(crypto, pid, raw, len(raw))
        assert parsed == entries
        offset = 0
        for e, data in zip(parsed, blobs, strict=True):
            assert e.type == TREE and e.offset == offset and e.raw_length == len(data)
            offset += e.length
            assert codec.decode(e.id, raw[e.offset: e.offset + e.length], e.raw_length) == data
        # Layout: blobs || sealed header || u32 LE header length.
        hlen = int.from_bytes(raw[-4:], "little")
        assert hlen == 41 * len(blobs) + crypto.overhead()
        assert offset + hlen + 4 == len(raw)
        # The header parses from a tail that holds just the header.
        assert parse_header(crypto, pid, raw[-(hlen + 4):], len(raw)) == entries

    def test_empty_pack(self) -> None:
        crypto = kc.Crypto(os.urandom(32))
        pid, raw, entries, _c, _i = build_pack(crypto, [])
        assert entries == [] and parse_header(crypto, pid, raw, len(raw)) == []

    def test_header_is_encrypted(self) -> None:
        crypto = kc.Crypto(os.urandom(32))
        pid, raw, entries, _c, ids = build_pack(crypto, self.blobs())
        for bid in ids:
            assert bid not in raw

    def test_truncated_pack(self) -> None:
        crypto = kc.Crypto(os.urandom(32))
        pid, raw, _e, _c, _i = build_pack(crypto, self.blobs())
        for cut in (1, 3, 4, 41, len(raw) // 2, len(raw) - 3):
            with pytest.raises(IntegrityError, match=pid[:8]):
                parse_header(crypto, pid, raw[:-cut], len(raw) - cut)  # end cut off
            with pytest.raises(IntegrityError):
                parse_header(crypto, pid, raw[cut:], len(raw) - cut)  # start cut off
        for tiny in (b"", b"\x00", b"\x01\x00\x00"):
            with pytest.raises(IntegrityError):
                parse_header(crypto, pid, tiny, len(tiny))
        with pytest.raises(IntegrityError):  # size claims more than the header accounts for
            parse_header(crypto, pid, raw, len(raw) + 1)

    def test_every_bit_flip_is_detected(self) -> None:
        """Any single damaged byte fails the header or the blob that holds it."""
        crypto = kc.Crypto(os.urandom(32))
        blobs = [b"x" * 10, os.urandom(40), TEXT[:300]]
        pid, raw, entries, codec, _i = build_pack(crypto, blobs)

        def fully_valid(data: bytes) -> bool:
            try:
                got = parse_header(crypto, pid, data, len(data))
                for e in got:
                    codec.decode(e.id, data[e.offset: e.offset + e.length], e.raw_length)
            except IntegrityError:
                return False
            return True

        assert fully_valid(raw)
        for pos in range(len(raw)):
            assert not fully_valid(flip(raw, pos, 1 << (pos % 8))), pos

    def test_header_length_out_of_range(self) -> None:
        crypto = kc.Crypto(os.urandom(32))
        pid, raw, _e, _c, _i = build_pack(crypto, self.blobs())
        bad = raw[:-4] + (len(raw) + 10).to_bytes(4, "little")
        with pytest.raises(IntegrityError, match="out of range"):
            parse_header(crypto, pid, bad, len(bad))

    def test_header_of_other_key(self) -> None:
        pid, raw, _e, _c, _i = build_pack(kc.Crypto(os.urandom(32)), self.blobs())
        with pytest.raises(IntegrityError):
            parse_header(kc.Crypto(os.urandom(32)), pid, raw, len(raw))

    def test_read_pack_header_with_large_header(self) -> None:
        """A header bigger than the first 64 KiB guess is read with a second request."""
        repo = new_repo(pack_size=1 << 30)
        pb = PackBuilder(DATA)
        for i in range(2000):  # 2000 * 41 bytes of header > 64 KiB
            data = i.to_bytes(4, "little")
            bid = repo.blob_id(data)
            pb.add(bid, repo.codec.encode(bid, data), len(data))
        pid, raw, entries = pb.finish(repo.crypto)
        repo.storage.put(pack_name(pid), raw)
        assert int.from_bytes(raw[-4:], "little") > 64 * 1024
        assert repo.read_pack_header(pid, len(raw)) == entries

    def test_backup_packs_are_homogeneous_and_match_index(self, tmp_path: Path) -> None:
        repo = new_repo()
        src = tmp_path / "src"
        (src / "d1" / "d2").mkdir(parents=True)
        (src / "big").write_bytes(random.Random(3).randbytes(150_000))
        (src / "d1" / "text").write_bytes(TEXT)
        (src / "d1" / "d2" / "small").write_bytes(b"small")
        run_backup(repo, paths=[str(src)], hostname="h")
        r = Repository.open(repo.storage, PW)
        r.load_index()
        stored = r.list_packs()
        assert stored == r.index.packs
        assert len(stored) > 3  # small pack_size: several packs
        n = 0
        for pid, size in stored.items():
            assert blake3.blake3(r.storage.get(pack_name(pid))).hexdigest() == pid
            entries = r.read_pack_header(pid, size)
            assert len({e.type for e in entries}) == 1  # data or tree, never both
            for e in entries:
                loc = r.index.get(e.id)
                assert loc is not None
                assert (loc.pack, loc.type, loc.offset, loc.length, loc.raw_length) == (
                    pid, e.type, e.offset, e.length, e.raw_length)
                n += 1
        assert n == len(r.index)


# ==================================================================== index


class TestIndex:
    def entries(self, n: int, start: int = 0) -> list[PackEntry]:
        out, off = [], 0
        for i in range(start, start + n):
            out.append(PackEntry(blake3.blake3(str(i).encode()).digest(), i % 2, off, 100 + i,
                                 200 + i))
            off += 100 + i
        return out

    def test_encode_decode_roundtrip(self) -> None:
        packs = [("aa" * 32, 1234, self.entries(3)), ("bb" * 32, 99, self.entries(2, 10)),
                 ("cc" * 32, 0, [])]
        raw = encode_index(packs, ["dd" * 32])
        assert decode_index(raw) == packs
        doc = json.loads(raw)
        assert doc["supersedes"] == ["dd" * 32]
        b = doc["packs"][0]["blobs"][1]
        e = packs[0][2][1]
        assert b == [e.id.hex(), e.type, e.offset, e.length, e.raw_length]

    def test_index_union_keeps_first_location(self) -> None:
        idx = Index()
        e = self.entries(2)
        idx.add_pack("p1", 10, e)
        idx.add_pack("p2", 20, [e[0]])
        loc = idx.get(e[0].id)
        assert loc is not None and loc.pack == "p1"
        assert len(idx) == 2 and idx.packs == {"p1": 10, "p2": 20}
        assert e[1].id in idx and os.urandom(32) not in idx
        assert idx.get(os.urandom(32)) is None
        assert dict(idx.items())[e[1].id].offset == e[1].offset

    def test_write_and_load_index_documents(self) -> None:
        repo = new_repo()
        p1 = ("aa" * 32, 1000, self.entries(3))
        p2 = ("bb" * 32, 2000, self.entries(2, 5))
        i1 = repo.write_index([p1])
        i2 = repo.write_index([p2], supersedes=[i1])
        raw = repo.storage.get(f"index/{i1}")
        assert blake3.blake3(raw).hexdigest() == i1
        assert json.loads(repo.load_raw_doc("index", "index", i2))["supersedes"] == [i1]
        r = Repository.open(repo.storage, PW)
        r.load_index()
        assert sorted(r.loaded_index_ids) == sorted([i1, i2])
        assert r.index.packs == {p1[0]: 1000, p2[0]: 2000}
        assert len(r.index) == 5
        assert r.index_errors == []

    def test_index_document_is_compressed(self) -> None:
        repo = new_repo(None)
        packs = [("aa" * 32, 1000, self.entries(500))]
        i1 = repo.write_index(packs)
        assert len(repo.storage.get(f"index/{i1}")) < len(encode_index(packs, [])) * 0.8

    def test_damaged_index_is_recorded_not_fatal(self) -> None:
        repo = new_repo()
        good = repo.write_index([("aa" * 32, 1000, self.entries(3))])
        bad = repo.write_index([("bb" * 32, 1000, self.entries(3, 10))])
        raw = repo.storage.get(f"index/{bad}")
        replace_object(repo.storage, f"index/{bad}", flip(raw, 40))
        r = Repository.open(repo.storage, PW)
        r.load_index()
        assert r.loaded_index_ids == [good]
        assert [i for i, _e in r.index_errors] == [bad]
        assert isinstance(r.index_errors[0][1], IntegrityError)
        rep = check(r)
        assert not rep.ok and any(p.object == f"index/{bad}" for p in rep.errors)


# ==================================================================== properties


_blob_data = st.one_of(st.binary(max_size=3000),
                       st.integers(0, 20_000).map(lambda n: TEXT[:n]),
                       st.integers(0, 20_000).map(lambda n: random.Random(n).randbytes(n)))


@settings(max_examples=40, deadline=None)
@given(blobs=st.lists(_blob_data, max_size=6), encrypted=st.booleans(),
       blob_type=st.sampled_from([DATA, TREE]))
def test_property_pack_roundtrip(blobs: list[bytes], encrypted: bool, blob_type: int) -> None:
    crypto = kc.Crypto(os.urandom(32) if encrypted else None)
    pid, raw, entries, codec, _ids = build_pack(crypto, blobs, blob_type)
    parsed = parse_header(crypto, pid, raw, len(raw))
    assert parsed == entries
    for e, data in zip(parsed, blobs, strict=True):
        assert e.type == blob_type
        assert codec.decode(e.id, raw[e.offset: e.offset + e.length], e.raw_length) == data
    assert decode_index(encode_index([(pid, len(raw), entries)], [])) == [
        (pid, len(raw), entries)]

_KEY = os.urandom(32)


@settings(max_examples=40, deadline=None)
@given(data=_blob_data, pos=st.integers(min_value=0), mask=st.integers(1, 255))
def test_property_damaged_blob_never_decodes(data: bytes, pos: int, mask: int) -> None:
    codec = BlobCodec(kc.Crypto(_KEY))
    bid = blake3.blake3(data).digest()
    stored = codec.encode(bid, data)
    with pytest.raises(IntegrityError):
        codec.decode(bid, flip(stored, pos % len(stored), mask), len(data))

