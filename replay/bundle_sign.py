"""Signing and checking the manifest of an evidence bundle.

A bundle is a directory (or a zip of one). ``manifest.json`` lists every other
file with its sha256 and size, plus whatever the exporter adds (filters, row
counts, tool version, export time). It is written in RFC 8785 canonical JSON,
so the bytes on disk are the bytes that were signed.

``manifest.sig`` is a C2SP signed note by the export key (Ed25519)::

    embedguard-bundle-manifest/v1
    sha256:<hex sha256 of manifest.json>

    — <key name> <base64 signature>

so the same vkey format and the same strict parser serve gateway checkpoints
and bundles. Verification needs only the bundle and the pinned vkeys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import rfc8785

from replay.verify_core import Finding, load_verifiers
from schemas.note import NoteError, Signer, Verifier, open_note, sign_note

__all__ = [
    "MANIFEST",
    "MANIFEST_VERSION",
    "SIGNATURE",
    "BundleError",
    "build_manifest",
    "bundle_dir",
    "canonical_json",
    "file_digests",
    "read_manifest",
    "sign_manifest",
    "verify_manifest",
]

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MANIFEST_VERSION = "embedguard-bundle-manifest/v1"
_CHUNK = 1 << 20


class BundleError(ValueError):
    """A bundle that cannot be opened safely; the message names the entry."""


@contextlib.contextmanager
def bundle_dir(path: Path, *, max_bytes: int = 16 * 1024**3) -> Iterator[Path]:
    """The bundle at ``path`` as a directory: the directory itself, or a zip
    extracted to a temporary one. Zip entries must be plain files under
    relative, normalised paths (no '..', './', '//', absolute paths or links),
    none twice even ignoring case, none both a file and a directory, and the
    central directory must account for every byte before it; the total size is
    capped. So a hostile archive cannot write elsewhere, and no other zip reader
    can find in it what this one did not check."""
    if path.is_dir():
        yield path
        return
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is neither a bundle directory nor a zip file")
    with tempfile.TemporaryDirectory(prefix="eg-bundle-") as tmp:
        try:
            with zipfile.ZipFile(path) as zf:
                _extract(path, zf, Path(tmp), max_bytes)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
                EOFError, OSError, zlib.error) as exc:
            # a damaged, encrypted or oddly compressed archive: not a bundle we wrote
            raise BundleError(f"{path} cannot be read as a bundle zip: {exc}") from None
        yield Path(tmp)


def _extract(path: Path, zf: zipfile.ZipFile, root: Path, max_bytes: int) -> None:
    """Extract ``zf`` into ``root`` after refusing anything that two zip readers
    could read differently (see ``bundle_dir``)."""
    _check_no_hidden_entries(path, zf)
    seen: dict[str, str] = {}
    files: set[str] = set()
    total = 0
    for info in zf.infolist():
        name = info.filename
        if info.is_dir():
            continue
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts or "\\" in name or not p.parts:
            raise BundleError(f"zip entry {name!r} is not a relative path inside the bundle")
        if p.as_posix() != name or "." in p.parts:
            # "./x" or "a//b" would land on the same file as "x" or "a/b"
            raise BundleError(f"zip entry {name!r} is not a normalised path")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise BundleError(f"zip entry {name!r} is a symbolic link")
        folded = name.casefold()
        if folded in seen:
            raise BundleError(f"zip entry {name!r} appears twice (as {seen[folded]!r})")
        seen[folded] = name
        parents = {a.as_posix().casefold() for a in p.parents if a.parts}
        if parents & files:
            raise BundleError(f"zip entry {name!r} is both a file and a directory")
        files.add(folded)
        total += info.file_size
        if total > max_bytes:
            raise BundleError(f"the bundle unpacks to more than {max_bytes} bytes")
        dest = root.joinpath(*p.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, dest.open("xb") as out:
            written = 0
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > info.file_size:  # a lying header
                    raise BundleError(f"zip entry {name!r} is larger than it says")
                out.write(chunk)
    for folded in files:  # a directory entry named like a file is refused above
        if any(f.startswith(folded + "/") for f in files):
            raise BundleError(f"zip entry {seen[folded]!r} is both a file and a directory")


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_DESCRIPTOR_SIG = b"PK\x07\x08"


def _check_no_hidden_entries(path: Path, zf: zipfile.ZipFile) -> None:
    """The entries the central directory lists must fill the archive from its
    first byte up to the central directory, with nothing before, between or
    after them: a reader that walks the local headers (``jar x``, streaming
    unzippers) would otherwise see entries this verifier never checked."""
    infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
    start_dir = getattr(zf, "start_dir", None)
    if start_dir is None:  # pragma: no cover - CPython keeps it
        return
    pos = 0
    with path.open("rb") as fh:
        for info in infos:
            if info.header_offset != pos:
                raise BundleError(
                    f"the zip holds {info.header_offset - pos:+d} byte(s) the central directory "
                    f"does not account for before entry {info.filename!r} (a hidden entry?)"
                )
            fh.seek(pos)
            header = fh.read(_LOCAL_HEADER.size)
            if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
                raise BundleError(f"zip entry {info.filename!r} has no local header")
            fields = _LOCAL_HEADER.unpack(header)
            flags, name_len, extra_len = fields[2], fields[9], fields[10]
            pos += _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
            if flags & 0x08:  # a data descriptor follows the data
                fh.seek(pos)
                head = fh.read(4)
                pos += (16 if head == _DESCRIPTOR_SIG else 12) + (
                    8 if info.file_size >= 0xFFFFFFFF or info.compress_size >= 0xFFFFFFFF else 0
                )
    if pos != start_dir:
        raise BundleError(
            f"the zip holds {start_dir - pos:+d} byte(s) between its last entry and its central "
            "directory that no listed entry accounts for (a hidden entry?)"
        )


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 (JCS) bytes of ``obj``."""
    return rfc8785.dumps(obj)


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def file_digests(root: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``root`` except the manifest and its
    signature, by POSIX path relative to ``root``. Symlinks are refused: a
    bundle must hold its own bytes."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise ValueError(f"{rel} is a symbolic link; a bundle holds only regular files")
        if not path.is_file() or rel in (MANIFEST, SIGNATURE):
            continue
        digest, size = _sha256_file(path)
        out[rel] = {"sha256": digest, "size": size}
    return out


def build_manifest(
    root: Path,
    *,
    tool_version: str,
    exported_at: datetime,
    filters: Mapping[str, Any] | None = None,
    row_counts: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    if exported_at.tzinfo is None:
        raise ValueError("exported_at must carry a time zone")
    manifest: dict[str, Any] = {
        "format": MANIFEST_VERSION,
        "tool_version": tool_version,
        "exported_at": exported_at.isoformat(),
        "filters": dict(filters or {}),
        "row_counts": dict(row_counts or {}),
        "files": file_digests(root),
    }
    for k, v in (extra or {}).items():
        if k in manifest:
            raise ValueError(f"extra manifest field {k!r} would replace a standard one")
        manifest[k] = v
    return manifest


def _signed_text(manifest_bytes: bytes) -> str:
    return f"{MANIFEST_VERSION}\nsha256:{hashlib.sha256(manifest_bytes).hexdigest()}\n"


def sign_manifest(root: Path, manifest: Mapping[str, Any], signer: Signer) -> Path:
    """Write ``manifest.json`` (canonical) and ``manifest.sig`` into ``root``."""
    data = canonical_json(dict(manifest))
    (root / MANIFEST).write_bytes(data)
    sig = root / SIGNATURE
    sig.write_text(sign_note(_signed_text(data), signer), encoding="utf-8")
    return sig


def read_manifest(root: Path) -> dict[str, Any]:
    obj = json.loads((root / MANIFEST).read_bytes())
    if not isinstance(obj, dict):
        raise ValueError("manifest.json is not a JSON object")
    return obj


def verify_manifest(
    root: Path, vkeys: Iterable[str | Verifier]
) -> tuple[dict[str, Any] | None, list[Finding]]:
    """Check the manifest signature with the pinned keys, then every file's
    hash and size, and that no file is missing or unlisted.

    Returns the manifest (None if it could not be trusted) and the findings,
    each naming the file and what is wrong.
    """
    verifiers = load_verifiers(vkeys)
    findings: list[Finding] = []
    mpath, spath = root / MANIFEST, root / SIGNATURE
    if not mpath.is_file():
        return None, [
            Finding("manifest_missing", "the bundle has no manifest.json", where=MANIFEST)
        ]
    if not spath.is_file():
        return None, [
            Finding("signature_missing", "the bundle has no manifest.sig", where=SIGNATURE)
        ]
    data = mpath.read_bytes()
    try:
        parsed, good = open_note(spath.read_text(encoding="utf-8"), verifiers)
    except (NoteError, UnicodeDecodeError) as exc:
        return None, [Finding("manifest_signature", str(exc), where=SIGNATURE)]
    if parsed.text != _signed_text(data):
        return None, [
            Finding(
                "manifest_replaced",
                f"manifest.json (sha256 {hashlib.sha256(data).hexdigest()}) is not the manifest "
                f"the export key ({', '.join(v.id_text for v in good)}) signed",
                where=MANIFEST,
            )
        ]
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        return None, [Finding("manifest_malformed", f"not JSON: {exc}", where=MANIFEST)]
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_VERSION:
        return None, [
            Finding("manifest_malformed", f"not a {MANIFEST_VERSION} manifest", where=MANIFEST)
        ]
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        return None, [Finding("manifest_malformed", "no files object", where=MANIFEST)]
    try:
        present = file_digests(root)
    except ValueError as exc:
        return manifest, [Finding("unexpected_file", str(exc))]
    for rel, want in sorted(listed.items()):
        have = present.get(rel)
        if have is None:
            findings.append(
                Finding("file_missing", "listed in the manifest but not in the bundle", where=rel)
            )
        elif have != want:
            findings.append(
                Finding(
                    "file_altered",
                    f"sha256 {have['sha256']} ({have['size']} bytes) but the manifest says "
                    f"{want.get('sha256')} ({want.get('size')} bytes)",
                    where=rel,
                )
            )
    for rel in sorted(set(present) - set(listed)):
        findings.append(
            Finding("unexpected_file", "in the bundle but not in the signed manifest", where=rel)
        )
    return manifest, findings
