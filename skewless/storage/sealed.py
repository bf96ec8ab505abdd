"""Online values of groups with `pii` features: the pii part sealed with AES-GCM before Redis.

A group with pii features stores, per entity, one Redis string as every group does, so a
lookup is still one MGET and the write guard (which compares the 34-byte time header) is
unchanged. The value is the group's non-pii features packed as usual (`codec.py`, header in
clear) under the format tag `b"2"`, followed by a sealed block and its length:

    plain part                b"2" · event/created header · non-pii record · non-pii strings
    sealed block              1 byte key-id length · key id (ASCII) · 12-byte random nonce ·
                              AES-256-GCM(pii record · pii strings) with its 16-byte tag
    4 bytes                   the sealed block's length, little-endian

The associated data is the Redis key, the key id and the pii feature names: a sealed block
copied to another entity's key, another group, or relabelled with another key id fails to
decrypt rather than serving someone else's value. The key id says which online data key
(`storage.keys.KeyRing`) sealed it, so rotation needs no rewrite.

Decoding splits each value, decrypts only when asked (`decrypt=True`: the caller may read
pii) and assembles records of the whole group's layout, so the read path (`serving/reader.py`)
reads them exactly like plain records. Without `decrypt`, the pii features decode as nulls —
callers refuse pii features to such readers before reading, so those nulls are never served.
Groups without pii features never reach this module: their codec is the plain `GroupCodec`.

A value of tag `b"1"` in a pii group was written before the group was tagged `pii` (the tag is
metadata, not part of a version's fingerprint): it decodes as the plain record it is, and the
next write of that entity seals it. Removing the tag from a group whose values are sealed
makes them unreadable to the plain codec (they read as missing): bump the version instead.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl
from cryptography.exceptions import InvalidTag

from skewless.errors import OnlineStoreError
from skewless.language.feature_group import FeatureGroup
from skewless.storage.codec import FORMAT_TAG, HEADER_WIDTH, Decoded, GroupCodec, validity_view
from skewless.storage.keys import KeyRing

NONCE = 12
_TRAILER = 4
SEALED_TAG = b"2"
_SEALED = SEALED_TAG[0]


def seal_block(aead: Any, kid: bytes, data: bytes, aad_head: bytes, aad_tail: bytes = b"") -> bytes:
    """The sealed block of `data`: key-id length · key id · nonce · AES-GCM ciphertext and tag,
    with `aad_head + kid + aad_tail` as associated data (what the block is bound to). The one
    layout for every sealed byte string (online pii values here, stream entries in
    `storage.streams`); `SealedCodec.decode_arrays` opens it inline, for speed."""
    nonce = secrets.token_bytes(NONCE)
    return bytes([len(kid)]) + kid + nonce + aead.encrypt(nonce, data, aad_head + kid + aad_tail)


def open_block(ring: KeyRing, block: bytes, aad_head: bytes, aad_tail: bytes = b"") -> tuple[bytes, bytes]:
    """(key id, data) of a `seal_block` block; `InvalidTag` when it does not decrypt (tampered
    with, or bound to something else)."""
    width = block[0]
    kid = block[1 : 1 + width]
    at = 1 + width
    aead = ring.aead(kid.decode())
    return kid, aead.decrypt(block[at : at + NONCE], block[at + NONCE :], aad_head + kid + aad_tail)


class SealedCodec(GroupCodec):
    """`GroupCodec` of a group with pii features: same records out, pii sealed at rest."""

    def __init__(self, group: FeatureGroup, ring: Callable[[], KeyRing]) -> None:
        super().__init__(group)
        pii = set(group.pii_features)
        self.pii = [f.name for f in self.features if f.name in pii]
        self.plain = GroupCodec(group, [f for f in self.features if f.name not in pii])
        self.secret = GroupCodec(group, [f for f in self.features if f.name in pii])
        self._ring = ring
        self._aad_tail = b"\0" + ",".join(self.pii).encode()

    # ------------------------------------------------------------------ encode
    def encode(self, frame: pl.DataFrame) -> list[bytes]:
        """One value per row; `frame` carries each row's Redis key in `__key` (the write path
        adds it), which the seal is bound to."""
        if "__key" not in frame.columns:
            raise OnlineStoreError(
                f"feature group '{self.group.ref}' has pii features: its values are sealed to "
                "their Redis keys, so encoding needs the `__key` column"
            )
        ring = self._ring()
        key_id = ring.current
        aead = ring.aead(key_id)
        kid = key_id.encode()
        plain = self.plain.encode(frame)
        secret = self.secret.encode(frame)
        out = []
        for value, hidden, key in zip(plain, secret, frame["__key"].to_list(), strict=True):
            block = seal_block(aead, kid, hidden[HEADER_WIDTH:], key.encode() + b"\0", self._aad_tail)
            out.append(SEALED_TAG + value[1:] + block + len(block).to_bytes(_TRAILER, "little"))
        return out

    def encode_array(self, frame: pl.DataFrame) -> Any:
        raise OnlineStoreError(f"feature group '{self.group.ref}': pii values are not window members")

    # ------------------------------------------------------------------ decode
    def decode_arrays(  # type: ignore[override]
        self, values: Sequence[bytes | None], keys: Sequence[str] | None = None, decrypt: bool = False
    ) -> Decoded:
        """Records of the whole group for raw values (None: missing key). `decrypt` opens the
        sealed blocks (`keys`, the values' Redis keys, are then required); without it the pii
        features are null and nothing is decrypted."""
        n = len(values)
        plain: list[bytes | None] = []
        hidden: list[bytes | None] = []
        # one AEAD per key id seen, taken from the ring at the first sealed value of that id
        # (no sealed value: the ring is never opened)
        aeads: dict[bytes, Any] = {}
        tail = self._aad_tail
        if decrypt and (keys is None or len(keys) != n):
            raise OnlineStoreError(f"feature group '{self.group.ref}': decrypting needs the values' keys")
        for i, value in enumerate(values):
            if value is None:
                plain.append(None)
                hidden.append(None)
                continue
            if value[0] != _SEALED:  # written before the group was tagged pii: split it
                shown, clear = self._split_plain(value)
                plain.append(shown)
                if decrypt:
                    hidden.append(clear)
                continue
            size = int.from_bytes(value[-_TRAILER:], "little")
            cut = len(value) - _TRAILER - size
            if cut < HEADER_WIDTH:
                raise OnlineStoreError(
                    f"feature group '{self.group.ref}': a stored value has no sealed pii block"
                )
            plain.append(FORMAT_TAG + value[1:cut])
            if decrypt:  # inlined: a Python call per value is most of what decrypting costs
                size = value[cut]
                kid = value[cut + 1 : cut + 1 + size]
                aead = aeads.get(kid)
                if aead is None:
                    aead = aeads[kid] = self._ring().aead(kid.decode())
                at = cut + 1 + size
                key = keys[i]  # type: ignore[index]
                try:
                    body = aead.decrypt(
                        value[at : at + NONCE],
                        value[at + NONCE : -_TRAILER],
                        key.encode() + b"\0" + kid + tail,
                    )
                except InvalidTag:
                    raise self._tampered(key, kid) from None
                hidden.append(value[:HEADER_WIDTH] + body)
        shown = self.plain.decode_arrays(plain)
        record = np.zeros(n, dtype=self.record)
        record["h"] = shown.record["h"]
        strings: dict[str, Any] = dict(shown.strings)
        self._copy(record, shown.record, self.plain.names)
        if decrypt:
            opened = self.secret.decode_arrays(hidden)
            self._copy(record, opened.record, self.secret.names)
            strings.update(opened.strings)
        else:
            for name in self.secret.strings:
                strings[name] = [""] * n
        validity = validity_view(record, n, len(self.names), self.width)
        return Decoded(n, shown.present, shown.event_us, shown.created_us, record, validity, strings)

    def decode(  # type: ignore[override]
        self, values: Sequence[bytes | None], keys: Sequence[str] | None = None, decrypt: bool = False
    ) -> pl.DataFrame:
        return self.frame(self.decode_arrays(values, keys, decrypt))

    def _split_plain(self, value: bytes) -> tuple[bytes, bytes]:
        """A plain (tag `b"1"`) value of the whole group as the (non-pii, pii) values the
        sealed path decodes: rare (history from before the tag), so decoded and re-packed."""
        frame = GroupCodec.frame(self, GroupCodec.decode_arrays(self, [value]))
        return self.plain.encode(frame)[0], self.secret.encode(frame)[0]

    @staticmethod
    def _copy(target: np.ndarray, source: np.ndarray, names: list[str]) -> None:
        for name in names:
            target[f"v_{name}"] = source[f"v_{name}"]
            target[f"f_{name}"] = source[f"f_{name}"]

    def _tampered(self, key: str, kid: bytes) -> OnlineStoreError:
        return OnlineStoreError(
            f"feature group '{self.group.ref}': the pii value at {key!r} does not decrypt "
            f"under key '{kid.decode(errors='replace')}' (tampered with, or moved from another key)"
        )
