"""RFC 9162 Merkle trees: the root of a batch of leaves, every leaf's inclusion path, and
the client's check (RFC 9162 §2.1.3.2) that recomputes the root from one leaf and its path.

Hashing is Certificate Transparency's (RFC 9162 §2.1.1, unchanged from RFC 6962):
leaf = SHA-256(0x00 || leaf bytes), node = SHA-256(0x01 || left || right), a tree of n > 1
leaves split at k, the largest power of two smaller than n. ``tests/unit/test_merkle.py``
pins the CT reference vectors.

Written here rather than taken from pymerkle 7: pymerkle's proofs carry the leaf itself and a
direction rule beside the path (not RFC 9162's bare path), its indices start at 1, and it
builds a 256-leaf tree with all its proofs in ~15 ms, a third more than signing the same
256 documents one by one costs (what batch signing is for). This builds them in under 1 ms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def tree(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root over these leaf hashes and each leaf's inclusion path (RFC 9162 §2.1.3.1:
    the sibling nearest the leaf first)."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    if len(leaves) == 1:
        return leaves[0], [[]]
    k = _split(len(leaves))
    left, left_paths = tree(leaves[:k])
    right, right_paths = tree(leaves[k:])
    for path in left_paths:
        path.append(right)
    for path in right_paths:
        path.append(left)
    return node_hash(left, right), left_paths + right_paths


def root_from_path(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes | None:
    """The root that ``path`` proves ``leaf`` (a leaf hash) at ``index`` of ``size`` leaves
    is included in, by RFC 9162 §2.1.3.2; None when the proof cannot be one (an index
    outside the tree, a path too long or too short for it, a hash of the wrong size)."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0 or len(p) != HASH_SIZE:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None
