"""schemas.note: C2SP signed notes and checkpoints.

Known answers (used as data): the example key and note from the documentation
of golang.org/x/mod/sumdb/note (Ed25519 is deterministic, so signing the same
text with the same key must give the same bytes), and the verifier-key example
of the C2SP signed-note specification."""

from __future__ import annotations

import base64

import pytest

from schemas.note import (
    CheckpointBody,
    NoteError,
    Signer,
    Verifier,
    key_id,
    open_note,
    parse_note,
    sign_note,
)

GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FF"
    "YC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    "— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZ"
    "XsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)


def test_go_reference_key_and_note_byte_for_byte() -> None:
    signer = Signer.from_skey(GO_SKEY)
    assert signer.verifier.vkey == GO_VKEY
    assert signer.skey() == GO_SKEY
    assert sign_note(GO_TEXT, signer) == GO_NOTE
    parsed, good = open_note(GO_NOTE, [Verifier.from_vkey(GO_VKEY)])
    assert parsed.text == GO_TEXT and [v.name for v in good] == ["PeterNeumann"]


def test_spec_example_verifies() -> None:
    v = Verifier.from_vkey(SPEC_VKEY)
    assert v.key_id.hex() == "530d903a" and v.vkey == SPEC_VKEY
    parsed, _ = open_note(SPEC_NOTE, [v])
    assert parsed.text == "This is an example message.\n"


def test_key_id_formula() -> None:
    v = Verifier.from_vkey(GO_VKEY)
    assert key_id("PeterNeumann", v.public_bytes).hex() == "c74f20a3"


def test_repr_and_str_never_show_the_private_key() -> None:
    signer = Signer.from_skey(GO_SKEY)
    secret = GO_SKEY.split("+", 4)[4]
    assert secret not in repr(signer) and secret not in str(signer)
    assert "PeterNeumann+c74f20a3" in repr(signer)


@pytest.mark.parametrize(
    "vkey, message",
    [
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "lower-case hex"),
        ("Peter+Neumann+c74f20a3+ARpc2Qc", "hex"),
        ("PeterNeumann+c74f20a3", "part"),
        ("PeterNeumann+c74f20a3+ApRc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "0x01"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10", "base64|0x01"),
        ("PeterNeumann+c74f20a3+!!!", "base64"),
        ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "name"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "name"),
    ],
)
def test_malformed_verifier_keys_are_refused(vkey: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        Verifier.from_vkey(vkey)


@pytest.mark.parametrize(
    "skey",
    [
        "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PUBLIC+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHK",
    ],
)
def test_malformed_signer_keys_are_refused(skey: str) -> None:
    with pytest.raises(NoteError):
        Signer.from_skey(skey)


def _sig_line(note: str) -> str:
    return note.rsplit("\n\n", 1)[1]


@pytest.mark.parametrize(
    "note, message",
    [
        (GO_NOTE[:-1], "end with a newline"),
        (GO_TEXT + _sig_line(GO_NOTE), "blank line"),
        (GO_TEXT + "\n", "no signature"),
        (GO_TEXT + "\n- PeterNeumann x08go/ZJkuBS9UG\n", "must start with"),
        (GO_TEXT + "\n— PeterNeumann\n", "key name"),
        (GO_TEXT + "\n— PeterNeumann AAA=\n", "too short"),
        (GO_TEXT + "\n— PeterNeumann not*base64\n", "base64"),
        ("bad\x01text\n" + "\n" + _sig_line(GO_NOTE), "control character"),
        (GO_TEXT + "\n" + _sig_line(GO_NOTE) * 101, "at most 100"),
    ],
)
def test_malformed_notes_are_refused(note: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        parse_note(note)


def test_changed_text_or_signature_fails_naming_the_key() -> None:
    v = Verifier.from_vkey(GO_VKEY)
    with pytest.raises(NoteError, match="PeterNeumann\\+c74f20a3 does not verify"):
        open_note(GO_NOTE.replace("problem,", "problem;"), [v])
    line = _sig_line(GO_NOTE)
    raw = bytearray(base64.b64decode(line.split(" ")[2]))
    raw[10] ^= 1
    forged = GO_TEXT + "\n— PeterNeumann " + base64.b64encode(bytes(raw)).decode() + "\n"
    with pytest.raises(NoteError, match="does not verify"):
        open_note(forged, [v])


def test_unpinned_signer_and_duplicate_signatures() -> None:
    other = Signer.generate("someone-else")
    note = sign_note(GO_TEXT, other)
    with pytest.raises(NoteError, match="no signature by a pinned key"):
        open_note(note, [Verifier.from_vkey(GO_VKEY)])
    # a foreign signature next to the pinned one is ignored
    go = Signer.from_skey(GO_SKEY)
    both = sign_note(GO_TEXT, other, go)
    _, good = open_note(both, [go.verifier])
    assert good == [go.verifier]
    twice = GO_NOTE + _sig_line(GO_NOTE)
    with pytest.raises(NoteError, match="more than once"):
        open_note(twice, [go.verifier])
    # same name, another key: not the pinned key
    impostor = Signer.generate("PeterNeumann")
    with pytest.raises(NoteError, match="no signature by a pinned key"):
        open_note(sign_note(GO_TEXT, impostor), [go.verifier])


def test_checkpoint_round_trip_and_strict_parse() -> None:
    signer = Signer.generate("embedguard-test")
    cp = CheckpointBody("embedguard/gw-1", 1234, bytes(range(32)), ("ext line",))
    note = cp.sign(signer)
    assert note.startswith("embedguard/gw-1\n1234\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")
    back, _ = CheckpointBody.open(note, [signer.verifier])
    assert back == cp
    root = base64.b64encode(bytes(32)).decode()
    for text, message in [
        (f"origin\n01\n{root}\n", "leading"),
        (f"origin\n-1\n{root}\n", "decimal"),
        (f"origin\n1\n{root[:-4]}\n", "32 bytes|base64"),
        (f"origin\n1\n{root}\n\n", "extension line is empty"),
        (f"origin\n1\n{root}", "newline"),
        (f"or igin\n1\n{root}\n", "spaces"),
        ("origin\n1\n", "root hash"),
        (f"origin\n{2**64}\n{root}\n", "decimal"),
    ]:
        with pytest.raises(NoteError, match=message):
            CheckpointBody.parse(text)
    with pytest.raises(NoteError, match="origin"):
        CheckpointBody("has space", 1, bytes(32)).text()
