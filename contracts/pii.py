"""PII masking for everything that leaves the node (session log, feedback comments).

Why: the session log is shipped to the log store (OpenSearch or Elasticsearch) and read by ops people; sensitive
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
``card``    ``[CARD]``    13–19 digits (spaces/dashes allowed) whose prefix and length
                          a card network issues (``CARD_NETWORKS``), Luhn-valid
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
* Validators (checksum, Luhn, card network) run in the substitution callback: a candidate
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


@dataclass(frozen=True)
class CardNetwork:
    """One card network's issuer ranges and number lengths.

    ``ranges`` are inclusive ``(low, high)`` pairs of issuer-number prefixes of equal digit
    count (``("2221", "2720")``; a single prefix is ``("4", "4")``)."""

    name: str
    ranges: tuple[tuple[str, str], ...]
    lengths: frozenset[int]

    def issues(self, digits: str) -> bool:
        """True when this network could have issued ``digits`` (length and prefix)."""
        if len(digits) not in self.lengths:
            return False
        return any(lo <= digits[:len(lo)] <= hi for lo, hi in self.ranges)


def _net(name: str, prefixes: str, lengths: Iterable[int]) -> CardNetwork:
    """``prefixes`` is a comma list of ``P`` or ``LOW-HIGH`` (same digit count)."""
    ranges = []
    for part in prefixes.split(","):
        lo, _, hi = part.strip().partition("-")
        ranges.append((lo, hi or lo))
    return CardNetwork(name, tuple(ranges), frozenset(lengths))


#: Which issuer prefixes and number lengths each card network uses (the ISO/IEC 7812
#: issuer ranges the networks publish). A Luhn-valid number that no network could have
#: issued (an 18-digit number starting with 4, a 15-digit one starting with 62) is an
#: order number, a tracking number or a timestamp, not a card. Lengths below 13 are not
#: looked for (``_CARD_RE``): a 12-digit Maestro number stays unmasked.
CARD_NETWORKS: tuple[CardNetwork, ...] = (
    _net("Visa", "4", (13, 16, 19)),
    _net("Mastercard", "51-55, 2221-2720", (16,)),
    _net("American Express", "34, 37", (15,)),
    _net("China UnionPay", "62, 81", range(16, 20)),
    _net("China T-Union", "31", (19,)),
    _net("China domestic (pre-UnionPay bank BINs)", "9558, 95595-95599", (19,)),
    _net("JCB", "3528-3589", range(16, 20)),
    _net("Diners Club International", "300-305, 3095, 36, 38-39", range(14, 20)),
    _net("Discover", "6011, 644-649, 65, 622126-622925", range(16, 20)),
    _net("Maestro", "5018, 5020, 5038, 5893, 6304, 6759, 6761-6763", range(13, 20)),
    _net("Dankort", "5019", (16,)),
    _net("Mir", "2200-2204", range(16, 20)),
    _net("BORICA", "2205", (16,)),
    _net("RuPay", "60, 65, 81, 82, 508, 353, 356", (16,)),
    _net("InterPayment", "636", range(16, 20)),
    _net("InstaPayment", "637-639", (16,)),
    _net("Verve", "506099-506198, 507865-507964, 650002-650027", (16, 18, 19)),
    _net("GPN", "1946, 50, 56, 58, 60-63", (16, 18, 19)),
    _net("Troy", "9792", (16,)),
    _net("UzCard", "8600", (16,)),
    _net("Humo", "9860", (16,)),
    _net("LankaPay", "357111", (16,)),
    _net("UkrCard", "60400100-60420099", range(16, 20)),
)


def card_network(digits: str) -> str | None:
    """The name of the first network in :data:`CARD_NETWORKS` whose prefixes and lengths
    admit ``digits``, or ``None`` (no network could have issued it). Luhn is separate."""
    for network in CARD_NETWORKS:
        if network.issues(digits):
            return network.name
    return None


def is_card_number(digits: str) -> bool:
    """A card network could have issued ``digits`` and its Luhn check digit is right."""
    return card_network(digits) is not None and luhn_ok(digits)


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
            return tag if is_card_number(s) else None
        # Grouped form: the whole run, or a leading run of groups (a grouped card may be
        # followed by an unrelated number), must be a valid card.
        groups = re.split(r"[ \-]", s)
        seps = re.findall(r"[ \-]", s)
        for end in range(len(groups), 0, -1):
            digits = "".join(groups[:end])
            if is_card_number(digits):
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
