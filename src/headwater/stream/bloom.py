"""A blocked Bloom filter of 64-bit hashes in numpy: the dedup state's in-memory first test.

One 64-bit word per key (chosen by the hash's top bits), :data:`K` bits set in it (from six
bits of the hash each, taken from the low end): a lookup or an insert of a batch is a
gather / scatter of one word per key, vectorised, with no per-key Python. At
:data:`BITS_PER_KEY` (16) bits per key the false-positive rate is about 0.5 %, at 8 about
3 %; beyond its capacity the rate grows (never a false negative: an answer "absent" is
always right, "maybe" must be confirmed elsewhere).

Sizes are powers of two between :data:`MIN_WORDS` and :data:`MAX_WORDS` words (128 KiB to
64 MiB): memory stays bounded whatever the state holds, at the cost of more "maybe"s.
"""

from __future__ import annotations

import math

import numpy as np

K = 6  # bits per key; K * 6 low bits of the hash pick them, the top bits pick the word
BITS_PER_KEY = 16
MIN_WORDS = 1 << 14
MAX_WORDS = 1 << 23  # top 23 bits index the word: disjoint from the 36 low bits used above
_ONE = np.uint64(1)
_SIX = np.uint64(63)


class Bloom:
    """A Bloom filter sized for ``capacity`` keys (at :data:`BITS_PER_KEY`), within bounds."""

    def __init__(self, capacity: int):
        words = 1 << max(0, math.ceil(math.log2(max(1, capacity) * BITS_PER_KEY / 64)))
        words = min(MAX_WORDS, max(MIN_WORDS, words))
        self.words = np.zeros(words, np.uint64)
        self._shift = np.uint64(64 - words.bit_length() + 1)
        self.capacity = words * 64 // BITS_PER_KEY
        self.count = 0  # keys inserted (with repeats)

    @property
    def nbytes(self) -> int:
        return self.words.nbytes

    def _locate(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(word index, mask of the K bits)`` of each hash (``h``: uint64)."""
        mask = np.zeros(len(h), np.uint64)
        for i in range(K):
            mask |= _ONE << ((h >> np.uint64(6 * i)) & _SIX)
        return (h >> self._shift).astype(np.intp), mask

    def add(self, h: np.ndarray) -> None:
        """Insert the hashes ``h`` (uint64)."""
        if len(h):
            index, mask = self._locate(h)
            np.bitwise_or.at(self.words, index, mask)
            self.count += len(h)

    def may_contain(self, h: np.ndarray) -> np.ndarray:
        """Per hash of ``h`` (uint64): ``False`` if it was never inserted, ``True`` if it may have been."""
        index, mask = self._locate(h)
        return (self.words[index] & mask) == mask
