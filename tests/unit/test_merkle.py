"""RFC 9162 Merkle trees (``fleetkeeper_common.merkle``): Certificate Transparency's reference
vectors, and every proof of every tree up to 300 leaves verifies while any change to the
leaf, the index or the path refuses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetkeeper_common import merkle

# The CT reference leaves and tree heads for sizes 1..8 (RFC 6962 hashing, kept by
# RFC 9162), with two of the reference inclusion proofs into the 8-leaf tree.
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
PROOFS = {
    0: [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    5: [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
HASHES = [merkle.leaf_hash(x) for x in LEAVES]


@pytest.mark.parametrize("size", range(1, 9))
def test_reference_roots(size: int) -> None:
    root, paths = merkle.tree(HASHES[:size])
    assert root.hex() == ROOTS[size - 1]
    for i, path in enumerate(paths):
        assert merkle.root_from_path(i, size, HASHES[i], path) == root


@pytest.mark.parametrize("index", sorted(PROOFS))
def test_reference_inclusion_proofs(index: int) -> None:
    _, paths = merkle.tree(HASHES)
    assert [h.hex() for h in paths[index]] == PROOFS[index]
    path = [bytes.fromhex(h) for h in PROOFS[index]]
    assert merkle.root_from_path(index, 8, HASHES[index], path) == bytes.fromhex(ROOTS[7])


def test_an_empty_batch_has_no_tree() -> None:
    with pytest.raises(ValueError, match="at least one leaf"):
        merkle.tree([])


def _leaves(size: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(size)]


@pytest.mark.parametrize("size", range(1, 301))
def test_every_index_of_every_size_verifies(size: int) -> None:
    leaves = _leaves(size)
    root, paths = merkle.tree(leaves)
    for i in range(size):
        assert merkle.root_from_path(i, size, leaves[i], paths[i]) == root


@settings(max_examples=400, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=300),
    data=st.data(),
)
def test_any_change_to_a_proof_refuses(size: int, data: st.DataObject) -> None:
    leaves = _leaves(size)
    root, paths = merkle.tree(leaves)
    i = data.draw(st.integers(0, size - 1), label="index")
    path = paths[i]

    def proves(index: int, n: int, leaf: bytes, p: list[bytes]) -> bool:
        return merkle.root_from_path(index, n, leaf, p) == root

    assert proves(i, size, leaves[i], path)
    # a flipped bit anywhere: in the leaf, or in any hash of the path
    if path:
        h = data.draw(st.integers(0, len(path) - 1), label="hash")
        bit = data.draw(st.integers(0, 255), label="bit")
        flipped = bytearray(path[h])
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not proves(i, size, leaves[i], [*path[:h], bytes(flipped), *path[h + 1 :]])
    leaf_bit = data.draw(st.integers(0, 255), label="leaf bit")
    leaf = bytearray(leaves[i])
    leaf[leaf_bit // 8] ^= 1 << (leaf_bit % 8)
    assert not proves(i, size, bytes(leaf), path)
    # another index, another size, another leaf swapped in, a hash missing or added
    if size > 1:
        j = data.draw(st.integers(0, size - 1).filter(lambda j: j != i), label="other")
        assert not proves(j, size, leaves[i], path)
        assert not proves(i, size, leaves[j], path)
    # a path alone does not fix the size (index 0 proves the same root in trees of 3 and
    # 4 leaves); the batch signature signs the size with the root, and
    # tests/unit/test_signing.py shows a changed size refused
    assert not proves(i, size, leaves[i], [*path, root])
    if path:
        assert not proves(i, size, leaves[i], path[:-1])


def test_impossible_proofs_have_no_root() -> None:
    leaves = _leaves(5)
    _, paths = merkle.tree(leaves)
    assert merkle.root_from_path(5, 5, leaves[0], paths[0]) is None  # index outside
    assert merkle.root_from_path(0, 5, leaves[0], paths[0][:-1]) is None  # too short
    assert merkle.root_from_path(0, 5, leaves[0], [*paths[0], leaves[1]]) is None  # too long
    assert merkle.root_from_path(0, 5, leaves[0], [b"x", *paths[0][1:]]) is None  # not a hash
    assert merkle.root_from_path(0, 1, leaves[0], []) == leaves[0]  # a batch of one
