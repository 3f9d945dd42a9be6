"""Identifier tokens: keyed, stable, columnar, and kept as they are when asked to."""

from __future__ import annotations

import hmac

import pyarrow as pa
import pytest

from headwater.errors import InvalidInputError
from headwater.ingest.tokens import Tokenizer, is_token

from .conftest import HMAC_KEY


def test_tokens_are_keyed_and_stable(tokenizer):
    assert tokenizer("u1") == Tokenizer(HMAC_KEY)("u1") != tokenizer("u2")
    assert Tokenizer(b"another key")("u1") != tokenizer("u1")
    assert is_token(tokenizer("u1")) and not is_token("ann@example.com")
    with pytest.raises(InvalidInputError):
        Tokenizer(b"")


@pytest.mark.parametrize("key", [b"k", HMAC_KEY, bytes(range(64)), bytes(range(65)), bytes(200)])
def test_a_token_is_the_rfc_2104_hmac_sha256_prefix(key):
    """Precomputed inner / outer states give what the standard library's HMAC gives, for keys
    shorter than, as long as and longer than a SHA-256 block."""
    for raw in ("u1", "", "ann@example.com", "é中\x00", "x" * 300):
        assert Tokenizer(key)(raw) == hmac.digest(key, raw.encode(), "sha256").hex()[:32]


def test_column_tokenises_each_value_and_keeps_nulls(tokenizer):
    got = tokenizer.column(pa.chunked_array([pa.array(["a", None, "b", "a"])]))
    assert got.to_pylist() == [tokenizer("a"), None, tokenizer("b"), tokenizer("a")]


def test_column_without_the_cache_gives_the_same_tokens_and_fills_no_cache():
    fresh = Tokenizer(HMAC_KEY)
    values = pa.array(["a", None, "b", "a"])
    assert fresh.column(values, cache=False).to_pylist() == fresh.column(values).to_pylist()
    replay = Tokenizer(HMAC_KEY, keep_tokens=True)
    token = fresh("a")
    assert replay.column(pa.array([token, "a"]), cache=False).to_pylist() == [token, token]  # tokens kept, raw ids hashed
    assert replay.cache_info().currsize == 0


def test_keep_tokens_leaves_tokens_and_tokenises_raw_ids(tokenizer):
    replay = Tokenizer(HMAC_KEY, keep_tokens=True)
    assert replay(tokenizer("ann@example.com")) == tokenizer("ann@example.com")  # already a token: kept
    assert replay.token("ann@example.com") == tokenizer("ann@example.com")  # raw: tokenised as usual
