"""Encryption keys of `pii` features: master keys behind a pluggable KMS client, key ids, rotation.

Envelope encryption, as Parquet modular encryption itself does it: *master keys* never leave
the KMS client; what is stored with the data are *data keys* wrapped by a master key.

    KmsClient                 wrap_key(key, master_key_id) / unwrap_key(wrapped, master_key_id)
                              (+ new_master_key() when it can create one): the pluggable part
     └─ LocalKeyFile          the default: 256-bit master keys in <keys>/master.json (0600)
    KeyRing                   <keys>/ring.json (0600): the key ids, which one is current, and
                              per id its master key id and the wrapped online data key

`<keys>` is `$SKEWLESS_KEYS_DIR`, else `<state>/keys` (0700). A deployment's processes must
share it (and the KMS): a value or file written under a key id is readable wherever that id
is known. `ring.json` holds nothing usable without the KMS (wrapped keys only); with the
default `LocalKeyFile` the master keys sit beside it, so the folder's permissions are the
protection — read them as you would the data. A real KMS plugs in through
`SKEWLESS_KMS_CLIENT=package.module:factory` (`factory(keys_dir) -> KmsClient`).

What uses which key:
- **Parquet** (`offline.write_frame`): pyarrow's `CryptoFactory` with our KMS client; the pii
  columns are encrypted with data keys wrapped by the *current* master key (double wrapping,
  key material inside the file), and the key id is written to the file's metadata
  (`skewless.key_id`) next to the list of encrypted columns (`skewless.pii`).
- **Redis values** (`storage/sealed.py`): AES-256-GCM under the current key id's online data
  key; the key id is prefixed to each value.

Rotation (`skewless keys rotate`) adds a new key id and makes it current: new files and values
use it, old ones keep naming theirs, and every old key stays in the ring for reading. Nothing is
rewritten; history written under a key is readable for as long as that key is kept.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from skewless.config import private_dirs
from skewless.errors import EncryptionKeyError

RING_FILE = "ring.json"
MASTER_FILE = "master.json"
KEY_ID_META = b"skewless.key_id"  # Parquet file metadata: the key id its pii columns use
PII_META = b"skewless.pii"  # Parquet file metadata: JSON list of the encrypted columns


@runtime_checkable
class KmsClient(Protocol):
    """Wraps and unwraps data keys with master keys it holds (the model is
    `pyarrow.parquet.encryption.KmsClient`, with bytes instead of base64 strings)."""

    def wrap_key(self, key: bytes, master_key_id: str) -> bytes: ...

    def unwrap_key(self, wrapped: bytes, master_key_id: str) -> bytes: ...


def keys_dir(state_dir: str | Path) -> Path:
    """Where the ring (and the local master keys) live: `$SKEWLESS_KEYS_DIR` or `<state>/keys`."""
    configured = os.environ.get("SKEWLESS_KEYS_DIR", "").strip()
    return Path(configured).expanduser() if configured else Path(state_dir) / "keys"


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Replace a small JSON file atomically, owner-only from its first byte."""
    private_dirs(path.parent)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    os.chmod(path, 0o600)


def _aes(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class LocalKeyFile:
    """The default KMS client: master keys (AES-256) in `<keys>/master.json`, 0600 in a 0700
    folder, like the roles' passwords. Wrapping is AES-GCM under the master key with the
    master key id as associated data (a wrapped key cannot be passed off under another id)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / MASTER_FILE
        self._keys: dict[str, bytes] = {}

    def _master(self, master_key_id: str) -> bytes:
        if master_key_id not in self._keys:
            self._keys = self._load()
        try:
            return self._keys[master_key_id]
        except KeyError:
            raise EncryptionKeyError(
                f"master key '{master_key_id}' is not in {self.path} (was it created on another "
                "machine? copy the keys folder, or set SKEWLESS_KEYS_DIR)"
            ) from None

    def _load(self) -> dict[str, bytes]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise EncryptionKeyError(f"no master keys at {self.path}: run `skewless keys init`") from None
        except PermissionError:
            raise EncryptionKeyError(
                f"cannot read the master keys at {self.path} (permission denied)"
            ) from None
        return {k: base64.b64decode(v) for k, v in raw.items()}

    def new_master_key(self, master_key_id: str) -> str:
        """Create a master key under `master_key_id` (a local file can; a remote KMS's keys are
        created in the KMS and named to `skewless keys rotate --master-key-id`)."""
        try:
            keys = self._load()
        except EncryptionKeyError:
            if self.path.exists():
                raise
            keys = {}
        if master_key_id in keys:
            raise EncryptionKeyError(f"master key '{master_key_id}' already exists in {self.path}")
        keys[master_key_id] = secrets.token_bytes(32)
        _write_private(self.path, {k: base64.b64encode(v).decode() for k, v in keys.items()})
        self._keys = keys
        return master_key_id

    def wrap_key(self, key: bytes, master_key_id: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + _aes(self._master(master_key_id)).encrypt(nonce, key, master_key_id.encode())

    def unwrap_key(self, wrapped: bytes, master_key_id: str) -> bytes:
        return _aes(self._master(master_key_id)).decrypt(wrapped[:12], wrapped[12:], master_key_id.encode())  # type: ignore[no-any-return]


def kms_client(folder: Path) -> KmsClient:
    """`$SKEWLESS_KMS_CLIENT` (`package.module:factory`, called with the keys folder), else
    the local key file."""
    spec = os.environ.get("SKEWLESS_KMS_CLIENT", "").strip()
    if not spec:
        return LocalKeyFile(folder)
    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name or "kms_client")
    except (ImportError, AttributeError) as exc:
        raise EncryptionKeyError(f"SKEWLESS_KMS_CLIENT={spec!r}: cannot load it ({exc})") from None
    client = factory(folder)
    if not isinstance(client, KmsClient):
        raise EncryptionKeyError(f"SKEWLESS_KMS_CLIENT={spec!r} returned {client!r}, not a KmsClient")
    return client  # type: ignore[no-any-return]


@dataclass(frozen=True)
class KeyEntry:
    """One key id of the ring: its master key and its wrapped online data key."""

    key_id: str
    master_key_id: str
    online_key: bytes  # wrapped by the master key
    created: str


class KeyRing:
    """The key ids a deployment encrypts with; `current` encrypts, every id decrypts.

    Open one with `KeyRing.open(state_dir)` (an error naming `skewless keys init` when none
    exists) and create one with `KeyRing.init`. Key ids are short (`k1`, `k2`, …) because the
    online one is prefixed to every value; what they map to in the KMS is in the ring.
    """

    def __init__(self, folder: Path, kms: KmsClient) -> None:
        self.folder = folder
        self.path = folder / RING_FILE
        self.kms = kms
        self._lock = threading.Lock()
        self._entries: dict[str, KeyEntry] = {}
        self._current = ""
        self._stamp: tuple[float, int] | None = None
        self._online: dict[str, Any] = {}  # key id -> AESGCM of its unwrapped online key
        self._factory: Any = None
        self._reload(force=True)

    # ------------------------------------------------------------------ life cycle
    @classmethod
    def open(cls, state_dir: str | Path, kms: KmsClient | None = None) -> KeyRing:
        folder = keys_dir(state_dir)
        if not (folder / RING_FILE).is_file():
            raise EncryptionKeyError(
                f"no encryption keys in {folder}: pii features need them; run `skewless keys init` "
                "(or point SKEWLESS_KEYS_DIR at the deployment's keys)"
            )
        return cls(folder, kms or kms_client(folder))

    @classmethod
    def init(
        cls, state_dir: str | Path, kms: KmsClient | None = None, master_key_id: str | None = None
    ) -> KeyRing:
        """Create the ring with its first key (`k1`); refused when one exists (rotate instead:
        replacing a ring would make everything written under it unreadable)."""
        folder = keys_dir(state_dir)
        if (folder / RING_FILE).exists():
            raise EncryptionKeyError(f"encryption keys already exist in {folder}; use `skewless keys rotate`")
        client = kms or kms_client(folder)
        _write_private(folder / RING_FILE, {"format": 1, "current": "", "keys": {}})
        ring = cls(folder, client)
        ring.rotate(master_key_id)
        return ring

    def rotate(self, master_key_id: str | None = None) -> str:
        """Add a key id and make it current; returns it. Old ids stay for reading.
        `master_key_id`: a master key the KMS already holds; else the local key file makes one
        (named like the key id)."""
        with self._lock:
            self._reload(force=True)
            key_id = f"k{len(self._entries) + 1}"
            while key_id in self._entries:
                key_id = f"k{int(key_id[1:]) + 1}"
            if master_key_id is None:
                create = getattr(self.kms, "new_master_key", None)
                if create is None:
                    raise EncryptionKeyError(
                        "this KMS client cannot create master keys: pass --master-key-id"
                    )
                master_key_id = create(key_id)
            data_key = secrets.token_bytes(32)
            entry = KeyEntry(
                key_id,
                str(master_key_id),
                self.kms.wrap_key(data_key, str(master_key_id)),
                datetime.now(UTC).isoformat(timespec="seconds"),
            )
            entries = {**self._entries, key_id: entry}
            _write_private(
                self.path,
                {
                    "format": 1,
                    "current": key_id,
                    "keys": {
                        e.key_id: {
                            "master_key_id": e.master_key_id,
                            "online_key": base64.b64encode(e.online_key).decode(),
                            "created": e.created,
                        }
                        for e in entries.values()
                    },
                },
            )
            self._reload(force=True)
            return key_id

    def _reload(self, force: bool = False) -> None:
        """Re-read the ring when it changed on disk (another process rotated): one `stat` per
        look-up of the current key, i.e. per file written or per chunk of online values, so a
        long-running writer uses a new key from its next write on."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            raise EncryptionKeyError(f"the key ring {self.path} disappeared") from None
        stamp = (stat.st_mtime, stat.st_ino)
        if stamp == self._stamp and not force:
            return
        try:
            raw = json.loads(self.path.read_text())
        except PermissionError:
            raise EncryptionKeyError(f"cannot read the key ring {self.path} (permission denied)") from None
        self._entries = {
            k: KeyEntry(k, v["master_key_id"], base64.b64decode(v["online_key"]), v.get("created", ""))
            for k, v in raw.get("keys", {}).items()
        }
        self._current = raw.get("current", "")
        self._stamp = stamp

    # ------------------------------------------------------------------ lookups
    @property
    def current(self) -> str:
        """The key id new files and values are encrypted under."""
        self._reload()
        if not self._current:
            raise EncryptionKeyError(
                f"the key ring {self.path} has no current key: run `skewless keys rotate`"
            )
        return self._current

    @property
    def entries(self) -> list[KeyEntry]:
        self._reload()
        return list(self._entries.values())

    def entry(self, key_id: str) -> KeyEntry:
        if key_id not in self._entries:
            self._reload(force=True)
        try:
            return self._entries[key_id]
        except KeyError:
            raise EncryptionKeyError(
                f"encryption key '{key_id}' is not in the key ring {self.path} "
                f"(known: {', '.join(self._entries) or 'none'})"
            ) from None

    def aead(self, key_id: str) -> Any:
        """AES-256-GCM under the key id's online data key (unwrapped once per process)."""
        aead = self._online.get(key_id)
        if aead is None:
            entry = self.entry(key_id)
            aead = self._online[key_id] = _aes(self.kms.unwrap_key(entry.online_key, entry.master_key_id))
        return aead

    # ------------------------------------------------------------------ Parquet
    def _crypto(self) -> Any:
        if self._factory is None:
            import pyarrow.parquet.encryption as pe

            kms = self.kms

            class _ArrowKms(pe.KmsClient):  # type: ignore[misc]
                """pyarrow's KMS interface (base64 text) over ours (bytes)."""

                def __init__(self, _config: Any) -> None:
                    super().__init__()

                def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
                    return base64.b64encode(kms.wrap_key(key_bytes, master_key_identifier)).decode()

                def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
                    return kms.unwrap_key(base64.b64decode(wrapped_key), master_key_identifier)

            self._factory = (pe.CryptoFactory(_ArrowKms), pe.KmsConnectionConfig())
        return self._factory

    def parquet_encryption(self, columns: list[str]) -> tuple[Any, str]:
        """File encryption properties for `columns` under the current key, and its key id.

        The footer stays plaintext (signed with the current master key, so tampering is
        detected): a file is then still a plain Parquet file to everything that only needs
        its shape — the store's completeness check (`PAR1` at both ends), row counts from the
        footer for training-set planning, the key id and column list in its metadata — and the
        non-pii columns stay readable without keys, so a role without pii access can still be
        given a group's other features. Only the pii columns' pages and their statistics
        (min/max would leak values) are encrypted."""
        import pyarrow.parquet.encryption as pe

        key_id = self.current
        master = self.entry(key_id).master_key_id
        factory, connection = self._crypto()
        config = pe.EncryptionConfiguration(
            footer_key=master,
            column_keys={master: list(columns)},
            encryption_algorithm="AES_GCM_V1",
            plaintext_footer=True,
            double_wrapping=True,
            internal_key_material=True,
            data_key_length_bits=256,
        )
        return factory.file_encryption_properties(connection, config), key_id

    def parquet_decryption(self) -> Any:
        """Decryption properties for any file of any key id (the key material in each file
        names its master key; the KMS client unwraps it)."""
        import pyarrow.parquet.encryption as pe

        factory, connection = self._crypto()
        return factory.file_decryption_properties(connection, pe.DecryptionConfiguration())


_RINGS: dict[str, KeyRing] = {}
_RINGS_LOCK = threading.Lock()


def key_ring(state_dir: str | Path) -> KeyRing:
    """The process' ring for a state folder (opened once; it follows rotations on disk)."""
    folder = str(keys_dir(state_dir).resolve())
    with _RINGS_LOCK:
        ring = _RINGS.get(folder)
        if ring is None:
            ring = _RINGS[folder] = KeyRing.open(state_dir)
        return ring


def ensure_key_ring(state_dir: str | Path) -> KeyRing:
    """The state folder's ring, created first when there is none: for the demo and the
    benchmarks, whose throw-away state folders hold pii data (a deployment runs
    `skewless keys init` itself, once, and keeps the keys)."""
    if (keys_dir(state_dir) / RING_FILE).exists():
        return key_ring(state_dir)
    KeyRing.init(state_dir)
    return key_ring(state_dir)


def forget_rings() -> None:
    """Drop the cached rings (tests that delete a keys folder)."""
    with _RINGS_LOCK:
        _RINGS.clear()
