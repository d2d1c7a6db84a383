"""PII masking for everything that leaves the node (session log, feedback comments).

Why: the session log is shipped to a search engine and read by ops people; sensitive
data has to be masked (敏感信息脱敏) before anyone can read it. Masking happens *before* a record is queued, so
no unmasked personal data ever reaches disk, a shipper or Elasticsearch.

Kinds (``contracts.metrics.PII_KINDS``) and their placeholders:

==========  ============  =========================================================
kind        placeholder   rule
==========  ============  =========================================================
``secret``  ``[SECRET]``  ``sk-…`` keys, ``Bearer …`` / ``Authorization: Basic …``,
                          known token shapes (GitHub, AWS, Slack, Google, JWT), and
                          values after ``api_key=``, ``token:``, ``password=``, 密码：…
``email``   ``[EMAIL]``   ``local@domain.tld``
``id``      ``[ID]``      18-digit resident ID, date plausible, GB 11643 checksum
``card``    ``[CARD]``    13–19 digits (spaces/dashes allowed), card-like first digit,
                          Luhn-valid
``phone``   ``[PHONE]``   mainland mobile ``1[3-9]x xxxx xxxx``, optional +86/0086/86
``ip``      ``[IP]``      dotted IPv4 with valid octets, not part of a longer dotted run
==========  ============  =========================================================

Design points:

* One precompiled regex per kind, applied in a fixed order (secret, email, id, card,
  phone, ip) so a longer thing is masked before a shorter thing that hides inside it
  (an e-mail like ``13812345678@163.com`` is one ``[EMAIL]``, not a phone).
* Digit boundaries are explicit ``(?<![0-9])`` / ``(?![0-9])`` look-arounds instead of
  ``\\b``: Python's ``\\b`` treats CJK characters as word characters, so ``手机13812345678``
  would have no boundary before the number.
* Validators (checksum, Luhn, card prefix) run in the substitution callback: a candidate
  that fails is left exactly as it was, which keeps near-misses (order numbers,
  timestamps, invalid IDs) intact.
* Placeholders contain no digits and none of the characters the patterns consume, so
  masking is idempotent: ``mask(mask(x).text) == mask(x)`` with zero new counts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from contracts.metrics import PII_KINDS

PLACEHOLDERS: dict[str, str] = {
    "phone": "[PHONE]",
    "email": "[EMAIL]",
    "id": "[ID]",
    "card": "[CARD]",
    "ip": "[IP]",
    "secret": "[SECRET]",
}
assert set(PLACEHOLDERS) == set(PII_KINDS)

#: Order in which the kinds are applied (longest / most specific first).
ORDER: tuple[str, ...] = ("secret", "email", "id", "card", "phone", "ip")


# --------------------------------------------------------------------------- validators

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def id_checksum_ok(number: str) -> bool:
    """True when ``number`` is an 18-character resident ID whose last character is the
    GB 11643-1999 check character (ISO 7064 MOD 11-2) of the first 17 digits."""
    if len(number) != 18 or not number[:17].isascii() or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17].upper()


def id_check_char(first17: str) -> str:
    """The check character for 17 ID digits (used by tests to generate valid IDs)."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS))
    return _ID_CHECK[total % 11]


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn (mod 10) check used by bank cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that makes ``partial + digit`` Luhn-valid (for tests and fixtures)."""
    for d in "0123456789":
        if luhn_ok(partial + d):
            return d
    raise AssertionError("unreachable")


def card_prefix_ok(digits: str) -> bool:
    """Issuer-prefix plausibility: UnionPay/Discover 6, Visa 4, Mastercard 5 and
    2221–2720, Amex/JCB/Diners 3, Chinese domestic 9. This keeps Luhn-passing timestamps
    (``2025…``, ``1762…``) and order numbers starting with 1/2/7/8/0 out."""
    first = digits[0]
    if first in "34569":
        return True
    if first == "2":
        return 2221 <= int(digits[:4]) <= 2720
    return False


# --------------------------------------------------------------------------- patterns

_ASCII_VALUE = r"A-Za-z0-9._~+/=\-"
_SECRET_RE = re.compile(
    r"""
    # key = value: keep the key, mask the value (>= 12 token characters)
    (?P<kv>(?:api[_-]?key|apikey|access[_-]?key(?:[_-]?id)?|secret[_-]?key|client[_-]?secret
          |access[_-]?token|refresh[_-]?token|auth[_-]?token|id[_-]?token|session[_-]?token
          |x-api-key|token|secret|密钥|令牌|秘钥)
        ["']?[ \t]*[:=：][ \t]*["']?)
    (?P<kvv>[A-Za-z0-9._~+/=\-]{12,})
    |
    # password = value (shorter values count: passwords are short)
    (?P<pw>(?:password|passwd|pwd|passphrase|密码|口令)["']?[ \t]*[:=：][ \t]*["']?)
    (?P<pwv>[A-Za-z0-9!#$%&*+\-./=?@^_~|]{4,})
    |
    # Authorization headers
    (?P<auth>(?:(?<![A-Za-z])bearer|authorization[ \t]*:[ \t]*basic)[ \t]+)
    (?P<authv>[A-Za-z0-9._~+/\-]{8,}=*)
    |
    # well-known token shapes
    (?P<tok>(?<![A-Za-z0-9_\-])
        (?:sk-(?:[A-Za-z0-9]+-){0,3}[A-Za-z0-9_]{16,}
          |gh[pousr]_[A-Za-z0-9]{30,}
          |github_pat_[A-Za-z0-9_]{30,}
          |AKIA[0-9A-Z]{16}
          |xox[abprs]-[A-Za-z0-9\-]{10,}
          |AIza[0-9A-Za-z_\-]{35}
          |eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})
        (?![A-Za-z0-9_\-]))
    """,
    re.VERBOSE | re.IGNORECASE,
)

# The same secret rules, split by family and written in lower case, are what actually runs:
# they are matched on ``text.lower()`` (same length as ``text`` for all but exotic input)
# without re.IGNORECASE, which makes sre ~20x slower on this alternation. Each family runs
# only when one of its trigger substrings occurs, and spans are cut from the original text.
# ``_SECRET_RE`` above is the fallback when lower() changes the length.
_KEY_SEP = r"""["']?[ \t]*[:=：][ \t]*["']?"""
_KV_LOW = re.compile(
    r"(?P<key>(?:api[_-]?key|apikey|access[_-]?key(?:[_-]?id)?|secret[_-]?key|client[_-]?secret"
    r"|access[_-]?token|refresh[_-]?token|auth[_-]?token|id[_-]?token|session[_-]?token"
    r"|x-api-key|token|secret|密钥|令牌|秘钥)" + _KEY_SEP + r")(?P<val>[a-z0-9._~+/=\-]{12,})")
_PW_LOW = re.compile(
    r"(?P<key>(?:password|passwd|pwd|passphrase|密码|口令)" + _KEY_SEP + r")"
    r"(?P<val>[a-z0-9!#$%&*+\-./=?@^_~|]{4,})")
_AUTH_LOW = re.compile(
    r"(?P<key>(?:(?<![a-z])bearer|authorization[ \t]*:[ \t]*basic)[ \t]+)(?P<val>[a-z0-9._~+/\-]{8,}=*)")
_TOK_LOW = re.compile(
    r"(?<![a-z0-9_\-])(?:sk-(?:[a-z0-9]+-){0,3}[a-z0-9_]{16,}|gh[pousr]_[a-z0-9]{30,}"
    r"|github_pat_[a-z0-9_]{30,}|akia[0-9a-z]{16}|xox[abprs]-[a-z0-9\-]{10,}|aiza[0-9a-z_\-]{35}"
    r"|eyj[a-z0-9_\-]{8,}\.eyj[a-z0-9_\-]{8,}\.[a-z0-9_\-]{8,})(?![a-z0-9_\-])")
#: Case-exact shapes a lower-case token match must also have in the original text.
_TOK_EXACT = re.compile(
    r"sk-(?:[A-Za-z0-9]+-){0,3}[A-Za-z0-9_]{16,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{35}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}")
_KV_TRIGGERS = ("key", "token", "secret", "密钥", "令牌", "秘钥")
_PW_TRIGGERS = ("pass", "pwd", "密码", "口令")
_AUTH_TRIGGERS = ("bearer", "authorization")
_TOK_TRIGGERS = ("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "akia", "xox", "aiza", "eyj")
#: One pass for "is there any trigger at all": most text has none, and one regex scan is
#: half the cost of testing the four trigger lists one substring at a time.
_ANY_SECRET_TRIGGER = re.compile("|".join(
    re.escape(t) for t in _KV_TRIGGERS + _PW_TRIGGERS + _AUTH_TRIGGERS + _TOK_TRIGGERS)).search


_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
)

# Speed note: each digit pattern starts by consuming a character class and *then* checks
# the digit boundary with a fixed-width look-behind (``[1-9](?<![0-9][1-9])`` = "a digit not
# preceded by a digit"). A leading look-behind would stop sre from using its fast
# first-character scan; this form is ~10x faster on text with few digits.
_ID_RE = re.compile(
    r"[1-9](?<![0-9][1-9])[0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
    r"[0-9]{3}[0-9Xx](?![0-9])"
)

# 13–19 contiguous digits, or groups of 3–6 digits joined by single spaces/dashes.
_CARD_RE = re.compile(
    r"[0-9](?<![0-9]{2})(?:[0-9]{12,18}|[0-9]{3,5}(?:[ \-][0-9]{3,6}){2,4})(?![0-9])"
)

_PHONE_TAIL = r"[3-9][0-9](?:[ \-]?[0-9]{4}){2}(?![0-9])"
_PHONE_RE = re.compile(
    r"\+86[ \-]?1" + _PHONE_TAIL
    + r"|0086(?<![0-9]0086)[ \-]?1" + _PHONE_TAIL
    + r"|86(?<![0-9]86)[ \-]?1" + _PHONE_TAIL
    + r"|1(?<![0-9]1)" + _PHONE_TAIL
)

# Candidate dotted quads (starts with a character class, so sre scans fast); the octet
# range, leading zeros and the boundaries are checked in the callback: not preceded by a
# letter, digit or dot (``v1.2.3.4``) and not followed by a digit or ``.digit``
# (``1.2.3.4.5``). A rejected candidate cannot hide a valid address: any address starting
# inside it would have the same bad left neighbour.
_IP_RE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_IP_LEFT_BAD = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")
_IP_HINT = re.compile(r"[0-9]\.[0-9]").search



_PLACEHOLDER_RE = re.compile(r"\[(?:PHONE|EMAIL|ID|CARD|IP|SECRET)\]")


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class MaskResult:
    """Masked text plus how many items of each kind were replaced (only kinds > 0)."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def merge_counts(*counts: Mapping[str, int]) -> dict[str, int]:
    """Sum several per-kind count mappings (e.g. prompt + response + reasoning)."""
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            if v:
                out[k] = out.get(k, 0) + v
    return out


# --------------------------------------------------------------------------- masker


class PiiMasker:
    """Masks the six PII kinds in a string. Stateless and thread-safe; reuse one."""

    def __init__(self, kinds: Iterable[str] = PII_KINDS) -> None:
        wanted = set(kinds)
        unknown = wanted - set(PII_KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds: {sorted(unknown)}")
        self.kinds = tuple(k for k in ORDER if k in wanted)

    # Each pass returns the new text and adds to ``counts``.
    def _sub(self, kind: str, regex: re.Pattern[str], repl: Callable[[re.Match[str]], str | None],
             text: str, counts: dict[str, int]) -> str:
        n = 0

        def _cb(m: re.Match[str]) -> str:
            nonlocal n
            out = repl(m)
            if out is None:
                return m.group(0)
            n += 1
            return out

        new = regex.sub(_cb, text)
        if n:
            counts[kind] = counts.get(kind, 0) + n
        return new

    @staticmethod
    def _secret(m: re.Match[str]) -> str | None:
        tag = PLACEHOLDERS["secret"]
        if m.group("kv") is not None:
            return m.group("kv") + tag
        if m.group("pw") is not None:
            return m.group("pw") + tag
        if m.group("auth") is not None:
            value = m.group("authv")
            # "Bearer of good news" must survive: a token has a digit or is long.
            if not (any(c.isdigit() for c in value) or len(value) >= 20):
                return None
            return m.group("auth") + tag
        return tag

    def _mask_secrets(self, text: str, counts: dict[str, int]) -> str:
        low = text.lower()
        if len(low) != len(text):  # lower() changed the length: spans would not line up
            return self._sub("secret", _SECRET_RE, self._secret, text, counts)
        if _ANY_SECRET_TRIGGER(low) is None:
            return text
        tag = PLACEHOLDERS["secret"]
        n = 0
        for regex, triggers in ((_KV_LOW, _KV_TRIGGERS), (_PW_LOW, _PW_TRIGGERS),
                                (_AUTH_LOW, _AUTH_TRIGGERS), (_TOK_LOW, _TOK_TRIGGERS)):
            if not any(t in low for t in triggers):
                continue
            pieces: list[str] = []
            last = 0
            for m in regex.finditer(low):
                if regex is _TOK_LOW:
                    if not _TOK_EXACT.fullmatch(text, m.start(), m.end()):
                        continue
                    out = tag
                else:
                    if regex is _AUTH_LOW:
                        value = m.group("val")
                        # "Bearer of good news" survives: a token has a digit or is long.
                        if not (any(c.isdigit() for c in value) or len(value) >= 20):
                            continue
                    out = text[m.start():m.start("val")] + tag
                pieces.append(text[last:m.start()])
                pieces.append(out)
                last = m.end()
                n += 1
            if pieces:
                pieces.append(text[last:])
                text = "".join(pieces)
                low = text.lower()
        if n:
            counts["secret"] = counts.get("secret", 0) + n
        return text

    @staticmethod
    def _email(m: re.Match[str]) -> str | None:
        return PLACEHOLDERS["email"]

    @staticmethod
    def _id(m: re.Match[str]) -> str | None:
        s = m.group(0)
        if not id_checksum_ok(s):
            return None
        month, day = int(s[10:12]), int(s[12:14])
        if day > _DAYS_IN_MONTH[month - 1]:
            return None
        return PLACEHOLDERS["id"]

    @staticmethod
    def _card(m: re.Match[str]) -> str | None:
        s = m.group(0)
        tag = PLACEHOLDERS["card"]
        if s.isdigit():
            return tag if (card_prefix_ok(s) and luhn_ok(s)) else None
        # Grouped form: the whole run, or a leading run of groups (a grouped card may be
        # followed by an unrelated number), must be a valid card.
        groups = re.split(r"[ \-]", s)
        seps = re.findall(r"[ \-]", s)
        for end in range(len(groups), 0, -1):
            digits = "".join(groups[:end])
            if 13 <= len(digits) <= 19 and card_prefix_ok(digits) and luhn_ok(digits):
                rest = "".join(seps[i] + groups[i + 1] for i in range(end - 1, len(groups) - 1))
                return tag + rest
        return None

    @staticmethod
    def _phone(m: re.Match[str]) -> str | None:
        return PLACEHOLDERS["phone"]

    @staticmethod
    def _ip(m: re.Match[str]) -> str | None:
        text, start, end = m.string, m.start(), m.end()
        if start > 0 and text[start - 1] in _IP_LEFT_BAD:
            return None
        if end < len(text) and (text[end].isdigit() or (
                text[end] == "." and end + 1 < len(text) and text[end + 1].isdigit())):
            return None
        for octet in m.group(0).split("."):
            if (len(octet) > 1 and octet[0] == "0") or int(octet) > 255:
                return None
        return PLACEHOLDERS["ip"]

    def mask(self, text: str | None) -> MaskResult:
        """Return ``text`` with every PII item replaced by its placeholder, and counts.

        ``None`` and ``""`` give an empty result, so callers need no special case for
        optional fields.
        """
        if not text:
            return MaskResult(text or "", {})
        counts: dict[str, int] = {}
        has_digit = _HAS_DIGIT(text) is not None
        for kind in self.kinds:
            if kind == "secret":
                text = self._mask_secrets(text, counts)
            elif kind == "email":
                if "@" in text:
                    text = self._sub(kind, _EMAIL_RE, self._email, text, counts)
            elif not has_digit:
                continue
            elif kind == "id":
                text = self._sub(kind, _ID_RE, self._id, text, counts)
            elif kind == "card":
                text = self._sub(kind, _CARD_RE, self._card, text, counts)
            elif kind == "phone":
                text = self._sub(kind, _PHONE_RE, self._phone, text, counts)
            elif kind == "ip":
                if _IP_HINT(text):
                    text = self._sub(kind, _IP_RE, self._ip, text, counts)
        return MaskResult(text, counts)


_HAS_DIGIT = re.compile(r"[0-9]").search

#: The default masker (all kinds).
DEFAULT_MASKER = PiiMasker()


def mask(text: str | None) -> MaskResult:
    """Mask all PII kinds in ``text`` with the default masker."""
    return DEFAULT_MASKER.mask(text)


def contains_placeholder(text: str) -> bool:
    """True when ``text`` carries one of the placeholders (a masked string)."""
    return _PLACEHOLDER_RE.search(text) is not None
