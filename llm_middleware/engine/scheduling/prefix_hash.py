"""What identifies a full KV-cache block: a hash chain over its tokens and everything before them.

A block's keys and values depend on its own tokens, on every token before it and on whatever
else shapes the forward (the model; an adapter or a multimodal input later): the chain's root
digests the latter (``root``), and each full block's hash digests its parent's hash and its
tokens.  Two sequences whose blocks have one hash hold the same keys and values there, so one
copy serves both.  SHA-256, because the tokens come from clients: a hash that a prompt could be
crafted to collide with would hand one client's cached context to another.
"""

from __future__ import annotations

import hashlib
from array import array


def root(*parts: bytes) -> bytes:
    """The chain's start for blocks computed under ``parts`` (the model's identity, then any salt)."""
    digest = hashlib.sha256(b"llm_middleware prefix cache")
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.digest()


def block_hash(parent: bytes, tokens: list[int]) -> bytes:
    """The hash of a full block holding ``tokens`` after the block hashed ``parent`` (or the root)."""
    return hashlib.sha256(parent + array("q", tokens).tobytes()).digest()


def chain(start: bytes, tokens: list[int], block_size: int) -> list[bytes]:
    """The hashes of the full blocks of ``tokens``, the first one's parent being ``start``."""
    hashes = []
    parent = start
    for begin in range(0, len(tokens) - block_size + 1, block_size):
        parent = block_hash(parent, tokens[begin : begin + block_size])
        hashes.append(parent)
    return hashes
