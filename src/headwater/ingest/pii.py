"""PII policy: personal data in ``properties`` / ``context`` / bad-row payloads, per source.

What happens to a value (policy :class:`headwater.config.PiiPolicy`, per source):

- key in ``keep``: stored as sent (and nothing under it is inspected);
- key in ``drop``: removed, with everything under it. Default: ``ip`` / ``$ip`` /
  ``ip_address``. No country is derived from a dropped IP: that needs a GeoIP database
  (e.g. MaxMind GeoLite2, licence-bound and not shipped here), and a guessed country is worse
  than none. Put ``ip`` in ``keep`` (or tokenise it) if a downstream job has one;
- key in ``tokenize``: every scalar under it becomes its HMAC token (:mod:`.tokens`, the same
  token as the identifier columns, so an email in traits joins with a user_id that was that
  email). Default: email, phone, mobile, telephone keys;
- any other string value (with ``detect_values``): email addresses, international phone
  numbers (``+`` then 7–15 digits, separators allowed) and IPv4/IPv6 addresses (validated
  with :mod:`ipaddress`) inside it are replaced by their tokens, the rest of the text kept
  (``"https://x.io/?e=ann@x.io"`` → ``"https://x.io/?e=<token>"``). National-format phone
  numbers (no ``+``) cannot be told from other digit strings: list their key in ``tokenize``.

Keys are matched at any depth, lowercase, without leading ``$`` and without ``_`` / ``-``.
Values that already are tokens (:func:`is_token`) are left alone: scrubbing is idempotent.

Cost: :meth:`PiiScrubber.apply` works on whole columns of a request's events (Arrow
compute, RE2): scalar values of drop keys are removed textually, then one search finds the
rows that may still hold PII (a policy key, ``@``, ``+digit``, a dotted quad, hex colons);
only those are decoded, scrubbed and re-encoded in Python. The search is a superset of what
the scrubber changes, so a row it skips has nothing to scrub.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.config import PiiPolicy
from headwater.ingest.tokens import Tokenizer, is_token

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

_EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
_PHONE = r"(?<![\w+])\+\d(?:[ ().\-]{0,2}\d){6,14}(?!\w)"
_IPV4 = r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])"
_IPV6 = r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]{0,15}(?![\w:])"
_VALUES = re.compile(f"(?P<email>{_EMAIL})|(?P<phone>{_PHONE})|(?P<ip>{_IPV4}|{_IPV6})")

# Loose RE2 trigger for the vectorised pre-filter (superset of _VALUES; \\u00[2-7] catches
# ASCII letters written as JSON escapes, which could spell a policy key).
_VALUE_TRIGGER = r"@|\+\s*\(?\d|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|::|[0-9a-f]*:[0-9a-f]*:[0-9a-f]*:|\\u00[2-7]"


def normalize_key(key: str) -> str:
    """``"$Email_Address"`` → ``"emailaddress"``: the form policy keys are compared in."""
    return key.lower().lstrip("$").replace("_", "").replace("-", "")


class PiiScrubber:
    """Applies one :class:`PiiPolicy` with ``tokenizer`` (see the module doc).

    ``apply(table)`` → the table with ``properties`` / ``context`` (JSON text columns) scrubbed;
    ``scrub_json(text)`` → scrubbed JSON text (input that is not JSON goes through
    ``scrub_text``); ``scrub_text(text)`` → text with value patterns and ``"key": value`` pairs
    of policy keys tokenised / removed textually (for truncated or malformed bad-row payloads)."""

    def __init__(self, policy: PiiPolicy, tokenizer: Tokenizer):
        self.policy = policy
        self._tok = tokenizer.token
        self._keep = {normalize_key(k) for k in policy.keep}
        self._drop = {normalize_key(k) for k in policy.drop} - self._keep
        self._tokenize = {normalize_key(k) for k in policy.tokenize} - self._keep - self._drop
        self._norm = functools.lru_cache(maxsize=4096)(normalize_key)
        # The column path (apply) is vectorised and costs a few Arrow calls per request:
        # properties and context are joined per row with "\0" (a raw NUL cannot occur in JSON
        # text), so each step runs once. RE2 compiles its pattern on every call (~15 µs for a
        # short plain pattern, ~300 µs with (?i) and per-character variants), so patterns are
        # kept plain: policy keys are matched as literals on a normalised copy of the text
        # (ASCII-lowercased, "_" and "-" removed: the key normalisation applied to the whole
        # text, a superset of the keys normalize_key maps to a policy key).
        parts = []
        if self._drop | self._tokenize:
            parts.append('"\\$*(?:' + "|".join(re.escape(k) for k in sorted(self._drop | self._tokenize, key=len, reverse=True)) + ')"')
        if policy.detect_values:
            parts.append(_VALUE_TRIGGER)
        self._trigger = "|".join(parts) if parts else None
        # Dropping a key whose value is a plain string (the common `"ip": "10.1.2.3"` of an
        # SDK's context) is textual, without a JSON decode: an unescaped `"key"` followed by
        # `:` can only be an object key in valid JSON (a quote inside a string is escaped), so
        # removing `, "key": "v"` keeps the JSON valid. Only a key after another key and the
        # usual spellings are matched (the policy's own and its normalised form, with an
        # optional "$"): a one-alternative pattern compiles fast (RE2 compiles per call).
        # A first key, other spellings, escaped strings and non-string values are caught by
        # the trigger and dropped by scrub().
        self._drop_text = None
        if self._drop:
            spellings = sorted(self._drop | {k.lstrip("$") for k in policy.drop if normalize_key(k) in self._drop}, key=len, reverse=True)
            key = '"\\$?(?:' + "|".join(re.escape(k) for k in spellings) + ')"\\s*:\\s*"[^"\\\\]*"'
            self._drop_text = f",\\s*{key}"

    # -- columns ---------------------------------------------------------------------
    def apply(self, table: pa.Table, columns: tuple[str, ...] = ("properties", "context")) -> pa.Table:
        """``table`` with its JSON text ``columns`` scrubbed (see the class doc).

        Arrow compute calls cost ~10-100 µs each whatever the row count (a request holds ~100
        events), so the common paths make as few as possible: nothing to drop or scrub → 6."""
        if self._trigger is None or table.num_rows == 0:
            return table
        originals = [_one_chunk(table.column(name)) for name in columns]
        joined = pc.binary_join_element_wise(*[pc.fill_null(c, "") if c.null_count else c for c in originals], "\0")
        size = _text_bytes(joined)
        if self._drop_text is not None:
            joined = pc.replace_substring_regex(joined, self._drop_text, "")
        normalised = pc.replace_substring(pc.replace_substring(pc.ascii_lower(joined), "_", ""), "-", "")
        mask = pc.match_substring_regex(normalised, self._trigger)
        hits = mask.true_count
        if not hits and _text_bytes(joined) == size:
            return table
        split = pc.split_pattern(joined, "\0")
        for i, (name, original) in enumerate(zip(columns, originals)):
            col = pc.list_element(split, i)
            if original.null_count:
                col = pc.if_else(pc.is_null(original), pa.scalar(None, pa.string()), col)
            if hits:
                scrubbed = pa.array([self.scrub_json(v) for v in col.filter(mask).to_pylist()], pa.string())
                col = pc.replace_with_mask(col, mask, scrubbed)
            table = table.set_column(table.schema.get_field_index(name), name, col)
        return table

    # -- JSON ------------------------------------------------------------------------
    def scrub_json(self, text: str | None) -> str | None:
        if text is None:
            return None
        try:
            obj = _decode(text)
        except (msgspec.DecodeError, RecursionError):
            return self.scrub_text(text)
        return _encode(self.scrub(obj)).decode()

    def scrub(self, value: Any) -> Any:
        """A scrubbed copy of a decoded JSON value."""
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                nk = self._norm(k)
                if nk in self._keep:
                    out[k] = v
                elif nk in self._drop:
                    continue
                elif nk in self._tokenize:
                    out[k] = self._tokenize_all(v)
                else:
                    out[k] = self.scrub(v)
            return out
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        if isinstance(value, str) and self.policy.detect_values:
            return self.scrub_string(value)
        return value

    def _tokenize_all(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._tokenize_all(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._tokenize_all(v) for v in value]
        if value is None or isinstance(value, bool) or value == "" or is_token(value):
            return value
        return self._tok(value if isinstance(value, str) else str(value))

    # -- text ------------------------------------------------------------------------
    def scrub_string(self, s: str) -> str:
        """``s`` with each email / phone / IP address in it replaced by its token."""
        return _VALUES.sub(self._replace, s) if _maybe_value(s) else s

    def _replace(self, m: re.Match) -> str:
        found = m.group()
        if m.lastgroup == "ip":
            try:
                ipaddress.ip_address(found)
            except ValueError:  # 999.1.2.3, "a:b:c" and the like: not an address
                return found
        return self._tok(found)

    def scrub_text(self, text: str) -> str:
        """``text`` that is not JSON (truncated, malformed, a ``key=value`` log line) with the
        policy applied textually: ``"key": value`` and ``key=value`` pairs of drop keys lose
        their value, those of tokenize keys get the token of the value; a policy key's string
        value cut off by truncation at the end of the text is removed (no closing quote, so no
        pair to match); then value detection."""
        if self._drop | self._tokenize:
            text = _PAIR.sub(self._replace_pair, text)
            text = _KV_PAIR.sub(self._replace_kv, text)
            tail = _CUT_TAIL.search(text)
            if tail is not None and self._norm(tail["key"]) in self._drop | self._tokenize:
                text = text[: tail.start()]
        return self.scrub_string(text) if self.policy.detect_values else text

    def _replace_pair(self, m: re.Match) -> str:
        nk = self._norm(m["key"])
        if nk in self._drop:
            return f'"{m["key"]}"{m["sep"]}null'
        if nk in self._tokenize:
            return f'"{m["key"]}"{m["sep"]}"{self._token_of(_unquote(m["value"]))}"'
        return m.group()

    def _replace_kv(self, m: re.Match) -> str:
        nk = self._norm(m["key"])
        if nk in self._drop:
            return f'{m["pre"]}{m["key"]}{m["sep"]}'
        if nk in self._tokenize:
            return f'{m["pre"]}{m["key"]}{m["sep"]}{self._token_of(m["value"])}'
        return m.group()

    def _token_of(self, raw: str) -> str:
        return raw if is_token(raw) else self._tok(raw)


def _unquote(value: str) -> str:
    """The text of a JSON string literal (escapes decoded), or ``value`` itself (a number)."""
    if not value.startswith('"'):
        return value
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError:
        return value[1:-1]


def _one_chunk(col: pa.ChunkedArray) -> pa.Array:
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _text_bytes(arr: pa.Array) -> int:
    """Total bytes of a string array's values, from its offsets (no compute call)."""
    offsets = np.frombuffer(arr.buffers()[1], np.int32)
    return int(offsets[arr.offset + len(arr)] - offsets[arr.offset])


# `"key": "value"` / `"key": 123` in JSON-like text; `key=value` in log lines and query
# strings (a value ends at whitespace, `|`, `&`, `;`, `,` or a quote); a quoted string value
# left open at the end of the text.
_PAIR = re.compile(r'"(?P<key>[^"\\]{1,64})"(?P<sep>\s*:\s*)(?P<value>"(?:[^"\\]|\\.)*"|-?\d[\d.eE+\-]*)')
_KV_PAIR = re.compile(r'(?P<pre>^|[\s|&?;,])(?P<key>[A-Za-z_$][\w$.\-]{0,63})(?P<sep>\s*=\s*)(?P<value>[^\s|&;,"]+)')
_CUT_TAIL = re.compile(r'"(?P<key>[^"\\]{1,64})"\s*:\s*"(?:[^"\\]|\\.)*\\?$')


def _maybe_value(s: str) -> bool:
    return "@" in s or "+" in s or "." in s or ":" in s


@functools.lru_cache(maxsize=256)
def scrubber(policy: PiiPolicy, tokenizer: Tokenizer) -> PiiScrubber:
    """The (cached) scrubber of ``policy``: built once per policy, not per request."""
    return PiiScrubber(policy, tokenizer)
