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

Keys are matched at any depth (and, with ``detect_values``, values found in keys themselves
are tokenised too), lowercase, without leading ``$`` and without ``_`` / ``-``.
Values that already are tokens (:func:`is_token`) are left alone: scrubbing is idempotent.
Values nested deeper than :data:`MAX_DEPTH` levels are replaced by :data:`TOO_DEEP` (the
scrubber never recurses without bound: no ``RecursionError`` whatever the input).

Text that is not JSON (:meth:`PiiScrubber.scrub_text`: truncated or malformed payloads, log
lines, bad-row reasons) is scrubbed textually and more strictly: besides whole values, any
``local@domain`` fragment (also written ``%40`` or ``\\u0040``), complete or not, becomes a
token. :meth:`PiiScrubber.scrub_prefix` is what bad rows store: scrubbed, cut to a length,
and, when cut, scrubbed again after the cut with the cut-off last word dropped, so half an
email / phone / IP / identifier at the end (that no pattern recognises) never survives.

The plain-text columns built from client input (:data:`TEXT_COLUMNS`: ``event_id`` from a
``messageId``, ``event_name``, ``platform``) get value detection too in :meth:`PiiScrubber.apply`.

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

# The look-behind starts a try only where a run of local-part characters starts: without it,
# a 32 KB run of them costs ~1 s (quadratic), with it linear; the matches are the same.
_EMAIL = r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
# A phone ends where no word character, nor `.` / `:` and one, follows: it never eats the
# start of a number or an address written after it (`+1 415 555 0100 203.0.113.9`).
_PHONE = r"(?<![\w+])\+\d(?:[ ().\-]{0,2}\d){6,14}(?!\w|[.:]\w)"
_IPV4 = r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?!\w|\.\d)"  # not part of 1.2.3.4.5; may end a sentence
_IPV6 = r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]{0,15}(?![\w:])"
_VALUES = re.compile(f"(?P<email>{_EMAIL})|(?P<phone>{_PHONE})|(?P<ip>{_IPV4}|{_IPV6})")
# In text that is not JSON: any `local@domain` fragment, also percent- or JSON-escaped, whole or
# cut (`ann@exam`), which the strict pattern above does not recognise.
_LOOSE_EMAIL = re.compile(r"(?<![\w.%+\-])[\w.%+\-]+(?:@|%40|\\u0040)[\w.\-]*", re.ASCII)
# The last word of a cut text (what follows the last delimiter), and a `+digits` run with
# phone separators reaching the end: dropped, they may be the first half of a value.
_WORD_ENDS = " \t\r\n\f\v\"'<>,;{}[]|&=`"
MAX_CUT_WORD = 256
_CUT_PHONE = re.compile(r"\+\d[\d ().\-]*$")

_TEXT_TRIGGER = r"[@+:]|\d\.\d"  # superset of _VALUES in plain text (no JSON escapes, no keys)
_TEXT_BYTES = (b"@", b"+", b":", b".")  # a value without any of these cannot match _TEXT_TRIGGER
MAX_DEPTH = 256  # levels of JSON nesting the scrubber walks (the collector refuses deeper messages first)
TOO_DEEP = "[removed: nested too deep]"
TEXT_COLUMNS = ("event_id", "event_name", "platform")  # plain strings from client input, scrubbed by apply()

# Loose RE2 trigger for the vectorised pre-filter (superset of _VALUES; \\u00[2-7] catches
# ASCII letters written as JSON escapes, which could spell a policy key).
_VALUE_TRIGGER = r"@|\+\s*\(?\d|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|::|[0-9a-f]*:[0-9a-f]*:[0-9a-f]*:|\\u00[2-7]"


def normalize_key(key: str) -> str:
    """``"$Email_Address"`` → ``"emailaddress"``: the form policy keys are compared in."""
    return key.lower().lstrip("$").replace("_", "").replace("-", "")


class PiiScrubber:
    """Applies one :class:`PiiPolicy` with ``tokenizer`` (see the module doc).

    ``apply(table)`` → the table with ``properties`` / ``context`` (JSON text columns) and
    :data:`TEXT_COLUMNS` scrubbed; ``scrub_json(text)`` → scrubbed JSON text (input that is not
    JSON goes through ``scrub_text``); ``scrub_text(text)`` → text with value patterns and
    ``"key": value`` pairs of policy keys tokenised / removed textually (for truncated or
    malformed bad-row payloads); ``scrub_prefix(text, limit)`` → at most ``limit`` characters
    of scrubbed text, safe at the cut (bad rows). None of them raises."""

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
        if table.num_rows and self.policy.detect_values:
            table = self._apply_text_columns(table)
        if self._trigger is None or table.num_rows == 0:
            return table
        originals = [_one_chunk(table.column(name)) for name in columns]
        texts = [pc.fill_null(c, "") if c.null_count else c for c in originals]
        # One column (the bulk import's properties, 500k rows a call) needs no join nor split.
        joined = pc.binary_join_element_wise(*texts, "\0") if len(texts) > 1 else texts[0]
        dropped = False
        if self._drop_text is not None:
            # Searching is ~half the cost of replacing in every row: replace only where found
            # (each match removes at least its leading comma, so found = changed).
            found = pc.match_substring_regex(joined, self._drop_text)
            if dropped := found.true_count > 0:
                joined = pc.replace_with_mask(joined, found, pc.replace_substring_regex(joined.filter(found), self._drop_text, ""))
        normalised = pc.replace_substring(pc.replace_substring(pc.ascii_lower(joined), "_", ""), "-", "")
        mask = pc.match_substring_regex(normalised, self._trigger)
        hits = mask.true_count
        if not hits and not dropped:
            return table
        split = pc.split_pattern(joined, "\0") if len(texts) > 1 else None
        for i, (name, original) in enumerate(zip(columns, originals)):
            col = pc.list_element(split, i) if split is not None else joined
            if original.null_count:
                col = pc.if_else(pc.is_null(original), pa.scalar(None, pa.string()), col)
            if hits:
                scrubbed = pa.array([self.scrub_json(v) for v in col.filter(mask).to_pylist()], pa.string())
                col = pc.replace_with_mask(col, mask, scrubbed)
            table = table.set_column(table.schema.get_field_index(name), name, col)
        return table

    def _apply_text_columns(self, table: pa.Table) -> pa.Table:
        """:data:`TEXT_COLUMNS` of ``table`` with detected values tokenised: per column a
        search of its bytes for the trigger's characters (a column of UUIDs, event names and
        platforms usually holds none: done), else one vectorised search with a short pattern
        (~30 µs for 100 rows: RE2 compiles it per call), then only the rows that may hold a
        value are scrubbed in Python."""
        for name in TEXT_COLUMNS:
            if name not in table.column_names:
                continue
            col = _one_chunk(table.column(name))
            if not contains_any(col, _TEXT_BYTES):
                continue
            mask = pc.match_substring_regex(col, _TEXT_TRIGGER)
            if mask.true_count:
                mask = pc.fill_null(mask, False)
                scrubbed = pa.array([self.scrub_string(v) for v in col.filter(mask).to_pylist()], col.type)
                i = table.schema.get_field_index(name)
                table = table.set_column(i, table.schema.field(i), pc.replace_with_mask(col, mask, scrubbed))
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

    def scrub(self, value: Any, depth: int = 0) -> Any:
        """A scrubbed copy of a decoded JSON value; containers deeper than :data:`MAX_DEPTH`
        become :data:`TOO_DEEP` (kept values too: the bound is what makes it safe)."""
        if isinstance(value, (dict, list)) and depth >= MAX_DEPTH:
            return TOO_DEEP
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                nk = self._norm(k)
                if nk in self._keep:
                    out[k] = v if depth + 1 < MAX_DEPTH or not isinstance(v, (dict, list)) else TOO_DEEP
                elif nk in self._drop:
                    continue
                elif nk in self._tokenize:
                    out[self._scrub_key(k)] = self._tokenize_all(v, depth + 1)
                else:
                    out[self._scrub_key(k)] = self.scrub(v, depth + 1)
            return out
        if isinstance(value, list):
            return [self.scrub(v, depth + 1) for v in value]
        if isinstance(value, str) and self.policy.detect_values:
            return self.scrub_string(value)
        return value

    def _tokenize_all(self, value: Any, depth: int) -> Any:
        if isinstance(value, (dict, list)) and depth >= MAX_DEPTH:
            return TOO_DEEP
        if isinstance(value, dict):
            return {self._scrub_key(k): self._tokenize_all(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self._tokenize_all(v, depth + 1) for v in value]
        if value is None or isinstance(value, bool) or value == "" or is_token(value):
            return value
        return self._tok(value if isinstance(value, str) else str(value))

    def _scrub_key(self, key: str) -> str:
        """A key with detected values tokenised: keys can be personal too (``{"ann@x.io": 1}``)."""
        return self.scrub_string(key) if self.policy.detect_values else key

    # -- text ------------------------------------------------------------------------
    def scrub_string(self, s: str) -> str:
        """``s`` with each email / phone / IP address in it replaced by its token."""
        return _VALUES.sub(self._replace, s) if _maybe_value(s) else s

    def _replace(self, m: re.Match) -> str:
        found = m.group()
        if m.lastgroup == "ip":
            address = found.rstrip(".")  # the IPv6 pattern takes a sentence's full stop along
            try:
                ipaddress.ip_address(address)
            except ValueError:  # 999.1.2.3, "a:b:c" and the like: not an address
                return found
            return self._tok(address) + found[len(address):]
        return self._tok(found)

    def scrub_text(self, text: str) -> str:
        """``text`` that is not JSON (truncated, malformed, a ``key=value`` log line) with the
        policy applied textually: ``"key": value`` and ``key=value`` pairs of drop keys lose
        their value, those of tokenize keys get the token of the value; a policy key's string
        value cut off by truncation at the end of the text is removed (no closing quote, so no
        pair to match); then value detection, and any ``local@domain`` fragment (module doc)."""
        if self._drop | self._tokenize:
            text = _PAIR.sub(self._replace_pair, text)
            text = _KV_PAIR.sub(self._replace_kv, text)
            tail = _CUT_TAIL.search(text)
            if tail is not None and self._norm(tail["key"]) in self._drop | self._tokenize:
                text = text[: tail.start()]
        if not self.policy.detect_values:
            return text
        text = self.scrub_string(text)
        return _LOOSE_EMAIL.sub(self._replace_loose, text) if ("@" in text or "%40" in text or "\\u0040" in text) else text

    def _replace_loose(self, m: re.Match) -> str:
        return self._tok(m.group())

    def scrub_prefix(self, text: str, limit: int, *, cut: bool = False) -> str:
        """``text`` scrubbed (:meth:`scrub_json`), at most ``limit`` characters. When the
        result is longer, or ``cut`` says ``text`` already is a cut-off prefix, the scrubbed
        text is cut, its last word (and a ``+digits`` run reaching the end) dropped, and it is
        scrubbed again as text: whatever was cut in two, the stored prefix holds no half value.
        Cutting scrubbed text is itself safe; the drop also covers input cut before it came here."""
        out = self.scrub_json(text)
        if cut or len(out) > limit:
            out = drop_cut_tail(out[:limit])
            out = self.scrub_text(out)[:limit]  # tokens may lengthen it; a cut token is no value
        return out

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


_OFFSETS = {pa.string(): np.int32, pa.binary(): np.int32, pa.large_string(): np.int64, pa.large_binary(): np.int64}


def contains_any(col: pa.Array | pa.ChunkedArray, needles: tuple[bytes, ...]) -> bool:
    """Whether some value of a string column may contain one of ``needles`` (False: none
    does). ``bytes.find`` over the column's data buffer, every value at once and no Arrow
    kernel to set up (~0.2 ms per MB per byte needle, memchr; ~1 ms per MB for longer ones):
    an order of magnitude under a ``match_substring`` call on a request's 100 rows. Null
    slots may add bytes and a match may span two values, so it may over-report, never miss;
    a column of another layout (string views) counts as containing them."""
    for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else (col,):
        width = _OFFSETS.get(chunk.type)
        if width is None:
            return True
        _, offsets, data = chunk.buffers()
        if data is None or not len(chunk):
            continue
        start, end = np.frombuffer(offsets, width)[[chunk.offset, chunk.offset + len(chunk)]]  # the chunk's bytes
        text = data[int(start) : int(end)].to_pybytes()
        if any(text.find(n) >= 0 for n in needles):
            return True
    return False


# `"key": "value"` / `"key": 123` in JSON-like text; `key=value` in log lines and query
# strings (a value ends at whitespace, `|`, `&`, `;`, `,` or a quote); a quoted string value
# left open at the end of the text.
_PAIR = re.compile(r'"(?P<key>[^"\\]{1,64})"(?P<sep>\s*:\s*)(?P<value>"(?:[^"\\]|\\.)*"|-?\d[\d.eE+\-]*)')
_KV_PAIR = re.compile(r'(?P<pre>^|[\s|&?;,])(?P<key>[A-Za-z_$][\w$.\-]{0,63})(?P<sep>\s*=\s*)(?P<value>[^\s|&;,"]+)')
_CUT_TAIL = re.compile(r'"(?P<key>[^"\\]{1,64})"\s*:\s*"(?:[^"\\]|\\.)*\\?$')


def drop_cut_tail(text: str) -> str:
    """``text`` (a cut-off prefix) without its last word and without a ``+digits`` run (a
    phone number with separators) reaching its end: the first half of an email, phone, IP
    or identifier is not recognisable as one, so it is removed rather than stored."""
    # rfind per delimiter: a regex `[^…]*$` search would be quadratic on one long word. Of a
    # longer word only the last MAX_CUT_WORD characters go: no email (RFC 5321: 254), phone or
    # address is longer, and an email glued to the word's start is tokenised whole anyway.
    text = text[: max(max(text.rfind(c) for c in _WORD_ENDS) + 1, len(text) - MAX_CUT_WORD)]
    phone = _CUT_PHONE.search(text)
    return text[: phone.start()] if phone is not None else text


def _maybe_value(s: str) -> bool:
    return "@" in s or "+" in s or "." in s or ":" in s


@functools.lru_cache(maxsize=256)
def scrubber(policy: PiiPolicy, tokenizer: Tokenizer) -> PiiScrubber:
    """The (cached) scrubber of ``policy``: built once per policy, not per request."""
    return PiiScrubber(policy, tokenizer)
