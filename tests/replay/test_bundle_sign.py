"""replay.bundle_sign: the signed manifest of an evidence bundle."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from replay.bundle_sign import (
    MANIFEST,
    SIGNATURE,
    BundleError,
    build_manifest,
    bundle_dir,
    canonical_json,
    read_manifest,
    sign_manifest,
    verify_manifest,
)
from schemas.note import Signer

KEY = Signer.generate("embedguard-export-test")


def _bundle(root: Path) -> Path:
    (root / "parquet").mkdir(parents=True)
    (root / "parquet" / "events.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    (root / "checkpoints.txt").write_text("embedguard/gw\n3\nAAAA\n")
    (root / "README.md").write_text("# Evidence\n")
    manifest = build_manifest(
        root,
        tool_version="0.1.0",
        exported_at=datetime(2026, 11, 29, 21, 0, tzinfo=UTC),
        filters={"since": "2026-11-01", "actor": "alice"},
        row_counts={"events": 3},
    )
    sign_manifest(root, manifest, KEY)
    return root


def test_a_signed_bundle_verifies(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b")
    manifest, findings = verify_manifest(root, [KEY.verifier.vkey])
    assert findings == [] and manifest is not None
    assert manifest["files"]["parquet/events.parquet"] == {
        "sha256": hashlib.sha256((root / "parquet" / "events.parquet").read_bytes()).hexdigest(),
        "size": 208,
    }
    assert set(manifest["files"]) == {"parquet/events.parquet", "checkpoints.txt", "README.md"}
    # canonical: the bytes on disk are RFC 8785 of the parsed manifest
    assert (root / MANIFEST).read_bytes() == canonical_json(read_manifest(root))


@pytest.mark.parametrize(
    "tamper, kind, where",
    [
        (lambda r: (r / "README.md").write_text("# Evidence!\n"), "file_altered", "README.md"),
        (lambda r: (r / "checkpoints.txt").unlink(), "file_missing", "checkpoints.txt"),
        (lambda r: (r / "extra.csv").write_text("a,b\n"), "unexpected_file", "extra.csv"),
        (
            lambda r: (r / MANIFEST).write_bytes(
                canonical_json({**read_manifest(r), "row_counts": {"events": 2}})
            ),
            "manifest_replaced",
            MANIFEST,
        ),
        (lambda r: (r / SIGNATURE).unlink(), "signature_missing", SIGNATURE),
        (
            lambda r: sign_manifest(r, read_manifest(r), Signer.generate("embedguard-export-test")),
            "manifest_signature",
            SIGNATURE,
        ),
    ],
    ids=["altered", "missing", "unlisted", "manifest-replaced", "no-signature", "wrong-key"],
)
def test_tampering_is_named(tmp_path: Path, tamper: object, kind: str, where: str) -> None:
    root = _bundle(tmp_path / "b")
    tamper(root)  # type: ignore[operator]
    _, findings = verify_manifest(root, [KEY.verifier.vkey])
    assert [(f.kind, f.where) for f in findings] == [(kind, where)], [str(f) for f in findings]


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b")
    os.symlink(root / "README.md", root / "link.md")
    _, findings = verify_manifest(root, [KEY.verifier.vkey])
    assert [f.kind for f in findings] == ["unexpected_file"]
    with pytest.raises(ValueError, match="symbolic link"):
        build_manifest(root, tool_version="x", exported_at=datetime.now(UTC))


def test_manifest_inputs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="time zone"):
        build_manifest(tmp_path, tool_version="x", exported_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="replace a standard"):
        build_manifest(
            tmp_path, tool_version="x", exported_at=datetime.now(UTC), extra={"files": {}}
        )
    m = build_manifest(
        tmp_path, tool_version="x", exported_at=datetime.now(UTC), extra={"checkpoints": 2}
    )
    assert json.loads(canonical_json(m))["checkpoints"] == 2


def _zip(root: Path, dest: Path, extra: Sequence[tuple[zipfile.ZipInfo | str, bytes]] = ()) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(root).as_posix())
        for info, data in extra:
            zf.writestr(info, data)
    return dest


def test_a_zipped_bundle_verifies_and_tampering_inside_is_named(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b")
    with bundle_dir(_zip(root, tmp_path / "b.zip")) as d:
        assert verify_manifest(d, [KEY.verifier.vkey])[1] == []
    (root / "README.md").write_text("changed\n")
    with bundle_dir(_zip(root, tmp_path / "c.zip")) as d:
        assert [f.kind for f in verify_manifest(d, [KEY.verifier.vkey])[1]] == ["file_altered"]
    with bundle_dir(root) as d:  # a directory is used as it is
        assert d == root


@pytest.mark.parametrize(
    "entry, message",
    [
        ("../evil.txt", "relative path"),
        ("/etc/evil.txt", "relative path"),
        ("README.md", "twice"),
        # read differently by different zip readers, or landing on one file
        ("./README.md", "normalised"),
        ("a//b.txt", "normalised"),
        ("readme.MD", "twice"),
        ("README.md/inner.txt", "both a file and a directory"),
    ],
)
def test_hostile_zip_entries_are_refused(tmp_path: Path, entry: str, message: str) -> None:
    root = _bundle(tmp_path / "b")
    with pytest.warns(UserWarning) if entry == "README.md" else contextlib.nullcontext():
        z = _zip(root, tmp_path / "h.zip", [(entry, b"x")])
    with pytest.raises(BundleError, match=message), bundle_dir(z):
        pass
    assert not (tmp_path / "evil.txt").exists()


def test_a_zip_symlink_and_a_non_bundle_are_refused(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b")
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = _zip(root, tmp_path / "l.zip", [(link, b"/etc/passwd")])
    with pytest.raises(BundleError, match="symbolic link"), bundle_dir(z):
        pass
    (tmp_path / "plain.txt").write_text("hi")
    with pytest.raises(BundleError, match="neither"), bundle_dir(tmp_path / "plain.txt"):
        pass


def _with_hidden_entry(zipped: bytes, name: str, data: bytes) -> bytes:
    """``zipped`` with one more local entry, between its last entry and its
    central directory, that the central directory does not list (readers that
    walk local headers see it; zipfile does not)."""
    import io
    import struct

    extra = io.BytesIO()
    with zipfile.ZipFile(extra, "w") as zf:
        zf.writestr(name, data)
    extra_bytes = extra.getvalue()
    local = extra_bytes[: zipfile.ZipFile(io.BytesIO(extra_bytes)).start_dir]  # type: ignore[attr-defined]
    start = zipfile.ZipFile(io.BytesIO(zipped)).start_dir  # type: ignore[attr-defined]
    out = bytearray(zipped[:start] + local + zipped[start:])
    eocd = out.rfind(b"PK\x05\x06")
    (offset,) = struct.unpack_from("<I", out, eocd + 16)
    struct.pack_into("<I", out, eocd + 16, offset + len(local))
    return bytes(out)


def test_an_entry_the_central_directory_does_not_list_is_refused(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b")
    genuine = _zip(root, tmp_path / "g.zip").read_bytes()
    hidden = tmp_path / "hidden.zip"
    hidden.write_bytes(_with_hidden_entry(genuine, "README.md", b"a different README\n"))
    with zipfile.ZipFile(hidden) as zf:  # zipfile itself sees only the listed entries
        assert zf.testzip() is None
    with pytest.raises(BundleError, match="hidden entry"), bundle_dir(hidden):
        pass
    prefixed = tmp_path / "prefixed.zip"  # bytes before the first entry
    prefixed.write_bytes(b"#!/bin/sh\n" + genuine)
    with pytest.raises(BundleError, match="hidden entry"), bundle_dir(prefixed):
        pass


def test_a_damaged_zip_is_a_bundle_error_not_a_crash(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b")
    z = _zip(root, tmp_path / "d.zip")
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("README.md")
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start] ^= 0xFF  # one byte of README.md's data: its CRC no longer matches
    z.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="cannot be read as a bundle zip"), bundle_dir(z):
        pass
