"""schemas.merkle against the transparency-dev/merkle vectors (RFC 6962 leaves,
roots, inclusion and consistency probes), plus proofs we build ourselves
checked by the independent RFC 9162 verifier for every size up to 70."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleTree,
    ProofError,
    hash_leaf,
    root_of,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads(
    (Path(__file__).parent / "data" / "transparency_dev_merkle_vectors.json").read_text()
)
LEAVES = [bytes.fromhex(h) for h in VECTORS["leaf_inputs_hex"]]
ROOTS = [bytes.fromhex(h) for h in VECTORS["root_hashes_hex"]]


def _b(s: str | None) -> bytes:
    return base64.b64decode(s) if s else b""


def _proof(p: list[str] | None) -> list[bytes]:
    return [_b(x) for x in p or []]


def test_empty_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT == ROOTS[0]
    assert Frontier().root() == ROOTS[0]
    assert MerkleTree().root() == ROOTS[0]


@pytest.mark.parametrize("size", range(len(ROOTS)))
def test_reference_roots(size: int) -> None:
    assert root_of([hash_leaf(x) for x in LEAVES[:size]]) == ROOTS[size]
    assert MerkleTree.from_data(LEAVES).root(size) == ROOTS[size]
    f = Frontier()
    for x in LEAVES[:size]:
        f.append(x)
    assert f.root() == ROOTS[size] and f.size == size
    assert len(f.nodes) == bin(size).count("1")


@pytest.mark.parametrize("name", sorted(VECTORS["inclusion"]))
def test_inclusion_probes(name: str) -> None:
    v: dict[str, Any] = VECTORS["inclusion"][name]
    args = (v["leafIdx"], v["treeSize"], _b(v["leafHash"]), _proof(v["proof"]), _b(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("name", sorted(VECTORS["consistency"]))
def test_consistency_probes(name: str) -> None:
    v: dict[str, Any] = VECTORS["consistency"][name]
    args = (v["size1"], v["size2"], _proof(v["proof"]), _b(v["root1"]), _b(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_our_proofs_match_the_vectors() -> None:
    """The happy-path probes were generated from the reference leaves: our
    builder must produce the very same proofs."""
    tree = MerkleTree.from_data(LEAVES)
    checked = 0
    for v in VECTORS["inclusion"].values():
        if (
            v["wantErr"]
            or v["treeSize"] > len(LEAVES)
            or v["leafHash"]
            != base64.b64encode(
                tree.leaf_hash(v["leafIdx"]) if v["leafIdx"] < tree.size else b""
            ).decode()
        ):
            continue
        assert tree.inclusion_proof(v["leafIdx"], v["treeSize"]) == _proof(v["proof"])
        checked += 1
    for v in VECTORS["consistency"].values():
        if v["wantErr"] or not 0 < v["size1"] < v["size2"] <= len(LEAVES):
            continue
        if _b(v["root2"]) != tree.root(v["size2"]):
            continue
        assert tree.consistency_proof(v["size1"], v["size2"]) == _proof(v["proof"])
        checked += 1
    assert checked >= 8


def test_every_proof_up_to_70_verifies_and_one_flipped_bit_fails() -> None:
    data = [i.to_bytes(2, "big") for i in range(70)]
    tree = MerkleTree.from_data(data)
    for size in range(1, 71):
        root = tree.root(size)
        assert root == root_of([hash_leaf(d) for d in data[:size]])
        for i in range(size):
            proof = tree.inclusion_proof(i, size)
            verify_inclusion(i, size, hash_leaf(data[i]), proof, root)
            if proof:
                bad = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
                with pytest.raises(ProofError):
                    verify_inclusion(i, size, hash_leaf(data[i]), bad, root)
            with pytest.raises(ProofError):
                verify_inclusion(i, size, hash_leaf(b"other"), proof, root)
        for size1 in range(1, size + 1):
            proof = tree.consistency_proof(size1, size)
            verify_consistency(size1, size, proof, tree.root(size1), root)
            if size1 < size:
                with pytest.raises(ProofError):
                    verify_consistency(size1, size, proof, hash_leaf(b"x"), root)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=300))
def test_frontier_equals_the_full_tree(data: list[bytes]) -> None:
    f = Frontier()
    tree = MerkleTree()
    for d in data:
        f.append(d)
        tree.append_hash(hash_leaf(d))
    assert f.root() == tree.root()
    resumed = Frontier(f.size, f.nodes)
    resumed.append(b"next")
    tree.append_hash(hash_leaf(b"next"))
    assert resumed.root() == tree.root()


def test_frontier_refuses_a_malformed_range() -> None:
    with pytest.raises(ValueError, match="3 has 2 nodes"):
        Frontier(3, [EMPTY_ROOT])


def test_proof_requests_outside_the_tree_are_refused() -> None:
    tree = MerkleTree.from_data(LEAVES)
    with pytest.raises(ValueError):
        tree.inclusion_proof(8, 8)
    with pytest.raises(ValueError):
        tree.root(9)
    with pytest.raises(ValueError):
        tree.consistency_proof(0, 4)
