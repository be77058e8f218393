"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

* leaf hash ``SHA-256(0x00 || data)``, node hash ``SHA-256(0x01 || left || right)``,
  the root of ``n`` leaves as in RFC 6962 §2.1 (``MTH``);
* inclusion proofs (``PATH``, §2.1.1) and consistency proofs (``PROOF``,
  §2.1.2), built from all the leaf hashes of a tree;
* their verification as RFC 9162 §2.1.3.2 and §2.1.4.2 describe: the verifier
  needs only the proof, the sizes and the roots;
* :class:`Frontier`, a compact range over ``[0, n)``: the roots of the perfect
  subtrees, at most ``log2(n) + 1`` hashes, to which leaves are appended in
  amortised O(1) hashing and whose root costs O(log n). The gateway keeps one
  per stream instead of every leaf.

No PyPI library offers this set (a compact range, RFC 9162 verification and
proof building over stored leaves) in a maintained form, so it is written here
and checked against the transparency-dev/merkle test vectors
(tests/schemas/data/transparency_dev_merkle_vectors.json).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "Frontier",
    "MerkleTree",
    "ProofError",
    "hash_children",
    "hash_leaf",
    "root_from_inclusion_proof",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

#: The root of the empty tree: SHA-256 of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF = b"\x00"
_NODE = b"\x01"


class ProofError(ValueError):
    """A proof that does not verify; the message says what does not fit."""


def hash_leaf(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``): RFC 6962's k."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` of the leaves whose hashes are given."""
    f = Frontier()
    for h in leaf_hashes:
        f.append_hash(h)
    return f.root()


class Frontier:
    """The compact range ``[0, size)`` of a growing tree.

    ``nodes`` holds the roots of the perfect subtrees that make up the tree,
    largest (leftmost) first: one per set bit of ``size``.
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self, size: int = 0, nodes: Iterable[bytes] = ()) -> None:
        self._nodes = list(nodes)
        self._size = size
        if len(self._nodes) != bin(size).count("1"):
            raise ValueError(
                f"a compact range of size {size} has {bin(size).count('1')} nodes, "
                f"not {len(self._nodes)}"
            )

    @property
    def size(self) -> int:
        return self._size

    @property
    def nodes(self) -> tuple[bytes, ...]:
        return tuple(self._nodes)

    def append(self, data: bytes) -> None:
        """Append one leaf (its data; hashed here)."""
        self.append_hash(hash_leaf(data))

    def append_hash(self, leaf_hash: bytes) -> None:
        node = leaf_hash
        size = self._size
        # Each trailing 1 bit of the old size is a perfect subtree of the same
        # height as the one being carried: merge them, as in binary addition.
        while size & 1:
            node = hash_children(self._nodes.pop(), node)
            size >>= 1
        self._nodes.append(node)
        self._size += 1

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        it = reversed(self._nodes)
        root = next(it)
        for left in it:
            root = hash_children(left, root)
        return root


class MerkleTree:
    """A tree over stored leaf hashes, to compute roots and build proofs.

    Every perfect subtree's hash is kept (about ``2n`` hashes), so a root or a
    proof for any size costs O(log n) after the O(n) build.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append_hash(h)

    @classmethod
    def from_data(cls, leaves: Iterable[bytes]) -> MerkleTree:
        return cls(hash_leaf(d) for d in leaves)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append_hash(self, leaf_hash: bytes) -> None:
        self._levels[0].append(leaf_hash)
        level, index = 0, len(self._levels[0]) - 1
        while index & 1:
            below = self._levels[level]
            node = hash_children(below[index - 1], below[index])
            level += 1
            if len(self._levels) == level:
                self._levels.append([])
            self._levels[level].append(node)
            index >>= 1

    def leaf_hash(self, index: int) -> bytes:
        return self._levels[0][index]

    def _hash(self, start: int, end: int) -> bytes:
        """MTH of leaves ``[start, end)``; ``start`` is aligned to the range's
        split, as every range RFC 6962's recursion visits is."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0:  # perfect: stored
            level = n.bit_length() - 1
            return self._levels[level][start >> level]
        k = _split(n)
        return hash_children(self._hash(start, start + k), self._hash(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self._check_size(size)
        return self._hash(0, size)

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside this tree's 0..{self.size}")

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """``PATH(index, D[0:size])`` of RFC 6962 §2.1.1."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is not in a tree of size {size}")
        proof: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                proof.append(self._hash(start + k, end))
                end = start + k
            else:
                proof.append(self._hash(start, start + k))
                start += k
        proof.reverse()  # RFC 6962 lists the path from the leaf up
        return proof

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """``PROOF(size1, D[0:size2])`` of RFC 6962 §2.1.2."""
        size2 = self.size if size2 is None else size2
        self._check_size(size2)
        if not 0 < size1 <= size2:
            raise ValueError(f"no consistency proof from size {size1} to size {size2}")
        proof: list[bytes] = []
        m, start, end, complete = size1, 0, size2, True
        while True:
            n = end - start
            if m == n:
                if not complete:
                    proof.append(self._hash(start, end))
                break
            k = _split(n)
            if m <= k:
                proof.append(self._hash(start + k, end))
                end = start + k
            else:
                proof.append(self._hash(start, start + k))
                start += k
                m -= k
                complete = False
        proof.reverse()
        return proof


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    if len(leaf_hash) != 32:
        raise ProofError(f"a leaf hash has 32 bytes, not {len(leaf_hash)}")
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError(f"the proof has {len(proof)} hashes, more than the path is long")
        if fn & 1 or fn == sn:
            r = hash_children(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = hash_children(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"the proof has {len(proof)} hashes, fewer than the path is long")
    return r


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless ``proof`` shows leaf ``index`` in the tree ``root``."""
    if len(root) != 32:
        raise ProofError(f"a tree root has 32 bytes, not {len(root)}")
    got = root_from_inclusion_proof(index, size, leaf_hash, proof)
    if got != root:
        raise ProofError(
            f"the inclusion proof of leaf {index} leads to root {got.hex()}, "
            f"not to the tree's root {root.hex()}"
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Raise ProofError unless ``proof`` shows tree ``root2`` extends ``root1``
    (RFC 9162 §2.1.4.2)."""
    if size1 > size2:
        raise ProofError(f"tree size {size1} is larger than the later size {size2}")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError("equal sizes need an empty proof")
        if root1 != root2:
            raise ProofError(f"two trees of size {size1} have different roots")
        return
    if not proof:
        raise ProofError(f"no proof given from size {size1} to size {size2}")
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"the proof has {len(proof)} hashes, more than needed")
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"the proof has {len(proof)} hashes, fewer than needed")
    if fr != root1:
        raise ProofError(f"the proof does not lead back to the root {root1.hex()} of size {size1}")
    if sr != root2:
        raise ProofError(
            f"the proof from size {size1} leads to {sr.hex()}, not to the root "
            f"{root2.hex()} of size {size2}"
        )
