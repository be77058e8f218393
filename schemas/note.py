"""C2SP signed notes and tlog checkpoints, with Ed25519 keys.

* A *signed note* (C2SP signed-note) is UTF-8 text ending in a newline, a blank
  line, then one line per signature: ``— <key name> <base64(key id || sig)>``.
  The key id of an Ed25519 key is the first 4 bytes of
  ``SHA-256(name || 0x0A || 0x01 || public key)``.
* A *verifier key* (vkey) is ``<name>+<hex key id>+<base64(0x01 || public key)>``;
  a signer key (the Go ``note`` package's format, kept in the gateway's key
  file) is ``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>``.
* A *checkpoint* (C2SP tlog-checkpoint) is the note text
  ``<origin>\\n<tree size>\\n<base64(root)>\\n`` plus optional extension lines.

Everything is parsed strictly: a note that is not exactly in this form is
refused with a message that says what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "ALG_ED25519",
    "CheckpointBody",
    "NoteError",
    "NoteSignature",
    "ParsedNote",
    "Signer",
    "Verifier",
    "checkpoint_origin",
    "key_id",
    "open_note",
    "parse_note",
    "sign_note",
]

ALG_ED25519 = 0x01
_DASH = "\u2014 "
_MAX_SIGNATURES = 100
# Key names: non-empty, no Unicode white space, no plus.
_NAME = re.compile(r"^[^\s+]+$")
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,19})$")


class NoteError(ValueError):
    """A note, key or checkpoint that is malformed or does not verify."""


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not valid base64") from None


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte id of an Ed25519 key named ``name``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def _raw_public(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Verifier:
    name: str
    key_id: bytes
    public_key: Ed25519PublicKey = field(repr=False, compare=False)
    public_bytes: bytes = field(repr=False)

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse ``<name>+<hex key id>+<base64(0x01 || public key)>``."""
        parts = vkey.strip().split("+", 2)  # base64 may hold '+'; a name may not
        if len(parts) != 3:
            raise NoteError(
                "a verifier key is <name>+<key id hex>+<base64 key>; "
                f"got {len(parts)} '+'-separated part(s)"
            )
        name, hex_id, b64 = parts
        _check_name(name)
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
            raise NoteError(
                f"verifier key {name}: key id {hex_id!r} is not 8 lower-case hex digits"
            )
        raw = _b64decode(b64, f"verifier key {name}")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError(
                f"verifier key {name}: expected 0x01 (Ed25519) and a 32-byte key, "
                f"got {len(raw)} bytes starting {raw[:1].hex() or 'empty'}"
            )
        kid = bytes.fromhex(hex_id)
        if kid != key_id(name, raw[1:]):
            raise NoteError(f"verifier key {name}: key id {hex_id} does not match the key")
        return cls(name, kid, Ed25519PublicKey.from_public_bytes(raw[1:]), raw[1:])

    @property
    def vkey(self) -> str:
        raw = bytes([ALG_ED25519]) + self.public_bytes
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(raw).decode()}"

    @property
    def id_text(self) -> str:
        """``<name>+<hex key id>``: how events and reports name the key."""
        return f"{self.name}+{self.key_id.hex()}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer:
    """An Ed25519 signing key with a name. Its repr never shows the key."""

    __slots__ = ("_key", "name", "verifier")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_name(name)
        self.name = name
        self._key = private_key
        pub = _raw_public(private_key.public_key())
        self.verifier = Verifier(name, key_id(name, pub), private_key.public_key(), pub)

    def __repr__(self) -> str:
        return f"Signer({self.verifier.id_text})"

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>``."""
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signer key is PRIVATE+KEY+<name>+<key id hex>+<base64 seed>")
        name, hex_id, b64 = parts[2:]
        _check_name(name)
        raw = _b64decode(b64, f"signer key {name}")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError(f"signer key {name}: expected 0x01 (Ed25519) and a 32-byte seed")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.verifier.key_id.hex() != hex_id:
            raise NoteError(f"signer key {name}: key id {hex_id!r} does not match the key")
        return signer

    def skey(self) -> str:
        """The private key as text, for the key file only."""
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        seed = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        b64 = base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{b64}"

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class ParsedNote:
    text: str
    signatures: tuple[NoteSignature, ...]


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("the note text must end with a newline")
    for ch in text:
        if ch != "\n" and (ord(ch) < 0x20 or ord(ch) == 0x7F):
            raise NoteError(f"the note text contains the control character U+{ord(ch):04X}")
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise NoteError("the note text is not valid UTF-8")


def sign_note(text: str, *signers: Signer) -> str:
    """``text`` followed by a blank line and one signature line per signer."""
    _check_text(text)
    if not signers:
        raise NoteError("sign a note with at least one key")
    lines = []
    for s in signers:
        sig = s.sign(text.encode())
        lines.append(f"{_DASH}{s.name} {base64.b64encode(s.verifier.key_id + sig).decode()}\n")
    return text + "\n" + "".join(lines)


def parse_note(note: str) -> ParsedNote:
    """Split a signed note into its text and signature lines, strictly."""
    if not note.endswith("\n"):
        raise NoteError("a signed note must end with a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("a signed note needs a blank line before its signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    _check_text(text)
    sig_lines = sig_block.split("\n")[:-1]
    if not sig_lines:
        raise NoteError("the note has no signature lines")
    if len(sig_lines) > _MAX_SIGNATURES:
        raise NoteError(f"the note has {len(sig_lines)} signatures; at most 100 are read")
    sigs = []
    for i, line in enumerate(sig_lines, 1):
        if not line.startswith(_DASH):
            raise NoteError(f"signature line {i} must start with '— ' (U+2014, space)")
        name, sep, b64 = line[len(_DASH) :].partition(" ")
        if not sep or " " in b64:
            raise NoteError(f"signature line {i} must be '— <key name> <base64 signature>'")
        _check_name(name)
        raw = _b64decode(b64, f"signature line {i}")
        if len(raw) < 5:
            raise NoteError(f"signature line {i} is too short to hold a key id and a signature")
        sigs.append(NoteSignature(name, raw[:4], raw[4:]))
    return ParsedNote(text, tuple(sigs))


def open_note(note: str, verifiers: Sequence[Verifier]) -> tuple[ParsedNote, list[Verifier]]:
    """Parse ``note`` and check its signatures against the pinned ``verifiers``.

    Returns the note and the verifiers whose signature verified. Raises
    NoteError if none of the pinned keys signed it, or if a signature that
    names a pinned key does not verify (the text or the signature was changed).
    Signatures by other keys are ignored.
    """
    parsed = parse_note(note)
    by_id = {(v.name, v.key_id): v for v in verifiers}
    good: list[Verifier] = []
    seen: set[tuple[str, bytes]] = set()
    for sig in parsed.signatures:
        v = by_id.get((sig.name, sig.key_id))
        if v is None:
            continue
        if (sig.name, sig.key_id) in seen:
            raise NoteError(f"key {v.id_text} signed the note more than once")
        seen.add((sig.name, sig.key_id))
        if not v.verify(parsed.text.encode(), sig.signature):
            raise NoteError(
                f"the signature by {v.id_text} does not verify: the note text or the "
                "signature was changed"
            )
        good.append(v)
    if not good:
        names = ", ".join(f"{s.name}+{s.key_id.hex()}" for s in parsed.signatures)
        pinned = ", ".join(v.id_text for v in verifiers) or "none"
        raise NoteError(f"no signature by a pinned key (signed by {names}; pinned: {pinned})")
    return parsed, good


def checkpoint_origin(stream_id: str, first_event_id: str) -> str:
    """The checkpoint origin of one run of an embedguard gateway stream:
    ``embedguard/<stream>/<event id of its stream_seq 0>``.

    A gateway restarted with the same ``--gateway-id`` numbers its stream from
    0 again; the first event's id tells the two trees apart. Spaces, '+' and
    other unsafe characters of the stream id are percent-encoded."""
    from urllib.parse import quote

    return f"embedguard/{quote(stream_id, safe='#:@-._~')}/{quote(first_event_id, safe='-')}"


@dataclass(frozen=True)
class CheckpointBody:
    """The text of a C2SP tlog checkpoint."""

    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        if not self.origin or any(c.isspace() for c in self.origin) or "+" in self.origin:
            raise NoteError(f"origin {self.origin!r} must be non-empty, without spaces or '+'")
        if len(self.root_hash) != 32:
            raise NoteError("a checkpoint root hash has 32 bytes")
        if self.tree_size < 0:
            raise NoteError("a tree size is not negative")
        ext = "".join(f"{e}\n" for e in self.extensions)
        return (
            f"{self.origin}\n{self.tree_size}\n{base64.b64encode(self.root_hash).decode()}\n{ext}"
        )

    @classmethod
    def parse(cls, text: str) -> CheckpointBody:
        if not text.endswith("\n"):
            raise NoteError("a checkpoint ends with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError("a checkpoint has an origin, a tree size and a root hash line")
        origin, size, root, *ext = lines
        if not origin or any(c.isspace() for c in origin):
            raise NoteError(f"checkpoint origin {origin!r} is empty or has spaces")
        if not _SIZE.match(size) or int(size) >= 2**64:
            raise NoteError(f"checkpoint tree size {size!r} is not a decimal without leading 0s")
        raw = _b64decode(root, "checkpoint root hash")
        if len(raw) != 32 or base64.b64encode(raw).decode() != root:
            raise NoteError("checkpoint root hash is not the base64 of 32 bytes")
        if any(not e for e in ext):
            raise NoteError("a checkpoint extension line is empty")
        return cls(origin, int(size), raw, tuple(ext))

    def sign(self, *signers: Signer) -> str:
        return sign_note(self.text(), *signers)

    @classmethod
    def open(
        cls, note: str, verifiers: Sequence[Verifier]
    ) -> tuple[CheckpointBody, list[Verifier]]:
        """Verify ``note`` with the pinned keys and parse its checkpoint."""
        parsed, good = open_note(note, verifiers)
        return cls.parse(parsed.text), good
