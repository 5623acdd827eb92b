"""Keys, key files and authenticated encryption of documents and blobs (see docs/design.md)."""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import os
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime

import blake3
from argon2.exceptions import Argon2Error
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stackvault.errors import IntegrityError, RepositoryError, WrongPassword

NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters; stored in every key file.

    Defaults are RFC 9106's second recommended option (t=3, 64 MiB, 4 lanes): about 0.2 s
    here, computed on all cores by libargon2 (argon2-cffi, the reference implementation).
    """

    t: int = 3  # passes
    m: int = 64 * 1024  # memory in KiB
    p: int = 4  # lanes (and threads)

    def derive(self, password: str, salt: bytes) -> bytes:
        try:
            return hash_secret_raw(password.encode(), salt, time_cost=self.t,
                                   memory_cost=self.m, parallelism=self.p, hash_len=32,
                                   type=Type.ID)
        except Argon2Error as exc:
            raise RepositoryError(f"bad key derivation parameters {self}: {exc}") from None


_derived: dict[tuple[KdfParams, bytes, bytes], Future[bytes]] = {}
_derived_lock = threading.Lock()


def derive_cached(kdf: KdfParams, password: str, salt: bytes) -> bytes:
    """``kdf.derive`` computed once per process, so it can be started early on another thread
    (see ``prefetch_unlock``) and picked up by whoever needs it first."""
    key = (kdf, hashlib.sha256(password.encode()).digest(), salt)
    with _derived_lock:
        fut = _derived.get(key)
        owner = fut is None
        if fut is None:
            fut = _derived[key] = Future()
    if owner:
        try:
            fut.set_result(kdf.derive(password, salt))
        except BaseException as exc:
            fut.set_exception(exc)
    return fut.result()


# Cheap parameters for tests only; they are stored in the key file like any others.
TEST_KDF = KdfParams(t=1, m=1024, p=1)


class Crypto:
    """AES-256-GCM with random nonces. ``None`` key means an unencrypted repository."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self._aead = AESGCM(key) if key is not None else None

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        if self._aead is None:
            return bytes(plaintext)
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, ciphertext: bytes | memoryview, aad: bytes, what: str) -> bytes:
        """Decrypt and authenticate; raise IntegrityError naming ``what`` on any damage."""
        if self._aead is None:
            return bytes(ciphertext)
        if len(ciphertext) < OVERHEAD:
            raise IntegrityError(f"{what}: too short to be a valid encrypted object")
        mv = memoryview(ciphertext)
        try:
            return self._aead.decrypt(mv[:NONCE_SIZE], mv[NONCE_SIZE:], aad)
        except InvalidTag:
            raise IntegrityError(f"{what}: authentication failed (damaged or tampered)") from None

    def overhead(self) -> int:
        return OVERHEAD if self._aead is not None else 0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def _key_check(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "check"}
    return blake3.blake3(json.dumps(body, sort_keys=True).encode()).hexdigest()


def make_key_file(master_key: bytes, password: str, kdf: KdfParams) -> bytes:
    """Wrap the master key under a password-derived key; return the key file's bytes."""
    salt = os.urandom(32)
    kek = kdf.derive(password, salt)
    payload = json.dumps({"enc": b64(master_key)}).encode()
    sealed = Crypto(kek).seal(payload, b"stackvault:key")
    doc = {
        "version": 1,
        "kdf": "argon2id",
        "t": kdf.t,
        "m": kdf.m,
        "p": kdf.p,
        "salt": b64(salt),
        "data": b64(sealed),
        "created": datetime.now(UTC).isoformat(),
        "hostname": socket.gethostname(),
        "username": _username(),
    }
    doc["check"] = _key_check(doc)
    return json.dumps(doc, indent=1).encode()


def parse_key_file(raw: bytes, name: str) -> dict:
    """Parse a key file and verify its checksum; raise IntegrityError if damaged."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("kdf") != "argon2id":
            raise ValueError("not a key document")
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"key file {name}: damaged ({exc})") from None
    if doc.get("check") != _key_check(doc):
        raise IntegrityError(f"key file {name}: checksum mismatch (damaged)")
    return doc


def kdf_of(doc: dict) -> KdfParams:
    return KdfParams(t=int(doc["t"]), m=int(doc["m"]), p=int(doc["p"]))


def open_key_file(doc: dict, password: str) -> bytes:
    """Return the master key, or raise WrongPassword."""
    kek = derive_cached(kdf_of(doc), password, unb64(doc["salt"]))
    try:
        payload = Crypto(kek).open(unb64(doc["data"]), b"stackvault:key", "key")
    except IntegrityError:
        raise WrongPassword("wrong password") from None
    key = unb64(json.loads(payload)["enc"])
    if len(key) != 32:
        raise RepositoryError("key file holds a master key of the wrong length")
    return key


def _username() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        return str(os.getuid())
