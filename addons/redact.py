"""Redaction (SPEC 10): what the gateway writes anywhere (log, /status, messages, flows) goes through here.

Rules, in the order `Redactor.text` applies them:

1. Exact known secrets: every credential the gateway injects is registered with `add_secret`, so the
   value is masked even where no name gives it away (a provider echoing a token in an error text).
2. Secret-named values: `name=value`, `"name": "value"`, `name: value`, `<name>value</name>` and
   `Cookie: ...` / `Authorization: Bearer ...` lines, where the name is secret-named (see
   `is_secret_name`), have their value replaced by `***`.
3. Numbers that are personal data:
   - Chinese mobile numbers (`1[3-9]` + 9 digits, also `+86`-prefixed or written `138 1234 5678`)
     keep their first 7 digits: `13812345678` -> `1381234****`.
   - ID card numbers (17 digits + a digit or `X`, with a plausible birth date at positions 7-14) keep
     the first 6 and last 4. The check digit is deliberately not verified: a mistyped or test ID
     is still personal data, and the birth-date test already keeps most 18-digit ids out.
   - Bank card numbers (13 to 19 digits, contiguous or in groups of four) keep the last 4, but only
     when they pass the Luhn check every real card number passes. Without it every millisecond
     timestamp, order id and trade number in a log line would be eaten; with it about one in ten
     such numbers is still masked, which is the price of never leaking a card number.
   A number only counts when it stands alone: not glued to ASCII letters or digits (so parts of
   hex digests and ids are left alone) and not the decimals of a float. Chinese text around it
   does not protect it (`手机13812345678` is masked).
4. The operator's `redact` rules from gateway.yaml, applied last, each replacing every match of its
   pattern with its `replace` text taken literally (no back-references).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import quote, quote_plus, unquote_plus

from addons.text import declared_charset

MASK = "***"

# Words that make a name secret. The SPEC list (access_token, token, secret, password, sign, signature,
# key, authorization, proxy-authorization, cookie, x-api-key, client_secret, app_secret) is covered by
# its single words; the fused spellings and synonyms below are what real APIs also use.
SECRET_WORDS = frozenset({
    "token", "secret", "password", "sign", "signature", "key", "authorization", "cookie",
    "passwd", "pwd", "passphrase", "credential", "credentials",
    "apikey", "appkey", "appsecret", "secretkey", "accesskey", "privatekey", "accesstoken",
    "refreshtoken", "sessiontoken", "clientsecret", "authtoken",
})

# A word after the secret word that says the field describes the secret rather than holds it:
# `sign_type` (RSA2), `token_type` (Bearer), `key_id`, `secret_id`, `token_url`, `expires_in`...
DESCRIBING_WORDS = frozenset({
    "type", "types", "id", "ids", "method", "methods", "version", "name", "names", "url", "uri",
    "endpoint", "expires", "expire", "expiry", "expiration", "in", "at", "time", "timestamp", "nonce",
    "len", "length", "count", "alg", "algorithm", "format", "encoding", "mode", "status", "scope",
    "hint", "field", "sn", "serial", "header", "headers", "file", "path", "policy",
})

# Words of a name: an acronym (`API` in `APIKey`), a capitalised or lower-case word, digits.
# Written so that no input makes it backtrack: names can be as long as a caller likes.
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def is_secret_name(name: str) -> bool:
    """Whether a parameter, header or field name names a secret.

    The name is cut into words at `_`, `-`, `.`, spaces, digits and camelCase humps (`X-Api-Key`,
    `app_secret`, `accessToken`, `paySign`, `api_key2`). It is secret when one of its words is a
    secret word, unless the word right after it describes the secret (`sign_type`, `token_type`,
    `key_id`). Whole words only: `monkey`, `keyword`, `keyboard`, `signal` and `tokenizer` are not
    secrets.
    """
    # The same few hundred names recur on every call; only short ones are cached, so that names
    # made up by a client cannot fill the cache with large strings.
    return _secret_name(name) if len(name) <= 64 else _judge_name(name)


def _judge_name(name: str) -> bool:
    words = [w.lower() for w in _WORD.findall(name) if not w.isdigit()]
    for i, word in enumerate(words):
        if word in SECRET_WORDS and (i + 1 == len(words) or words[i + 1] not in DESCRIBING_WORDS):
            return True
    return False


_secret_name = lru_cache(maxsize=8192)(_judge_name)


def _mentions_secret_name(s: str) -> bool:
    """Cheap gate before the name-based regexes. Plain substring tests on the lowered text: several
    times faster than one case-insensitive regex alternation, and most log text has none of them."""
    low = s.lower()
    return ("key" in low or "token" in low or "sign" in low or "secret" in low or "pass" in low
            or "auth" in low or "cookie" in low or "bearer" in low or "pwd" in low or "credential" in low)


_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}"
# `name=value`, `name: value`, `"name": "value"`, `'name': 'value'`. The lookbehind makes every
# attempt start at the beginning of a name, so scanning stays linear.
_KEY_VALUE = re.compile(
    r"(?<![A-Za-z0-9_.\-])(?P<q>[\"']?)(?P<name>" + _NAME + r")(?P=q)(?P<sep>[ \t]*[:=][ \t]*)"
    r"(?P<val>\"(?:[^\"\\\r\n]|\\.)*\"|'[^'\r\n]*'"
    r"|(?i:bearer|basic|digest|token|aws4-hmac-sha256|tc3-hmac-sha256)[ \t]+[^\s,;&\"']+"
    r"|[^\s&,;\"'<>{}\[\]]+)"
)
# CDATA content stops at the next `<`: a secret holds none, and an unterminated CDATA then costs
# a scan to the next tag, not to the end of the text, for each element that opens one.
_XML_ELEMENT = re.compile(r"<(?P<name>" + _NAME + r")>(?P<val><!\[CDATA\[[^<]*?\]\]>|[^<]*)</(?P=name)>")
# A header line: the whole rest of the line is the secret (a Cookie holds several pairs).
_COOKIE_LINE = re.compile(r"(?im)(?<![A-Za-z0-9_\-])(?P<head>(?:set-)?cookie[ \t]*:[ \t]*)[^\r\n]+")
# A bearer token standing alone in text ("retrying with Bearer eyJ..."): token68 syntax (RFC 7235).
_BEARER = re.compile(r"(?i)\b(?P<scheme>bearer)[ \t]+[A-Za-z0-9._~+/\-]{8,}=*(?![A-Za-z0-9._~+/=\-])")

_NUMBER = re.compile(
    r"(?<![0-9A-Za-z])(?<![0-9]\.)(?:"
    r"(?P<spaced>1[3-9][0-9][ \-][0-9]{4}[ \-][0-9]{4})"
    r"|(?P<grouped>[0-9]{4}(?:[ \-][0-9]{4}){2,3}(?:[ \-][0-9]{1,3})?)"
    r"|(?P<run>\+?[0-9]{11,19}[Xx]?)"
    r")(?![0-9A-Za-z])"
)
_PHONE = re.compile(r"1[3-9][0-9]{9}")
# region (6) + birth date YYYYMMDD + sequence (3) + check character
_ID_CARD = re.compile(
    r"[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx]"
)
# Fast path: no number of interest without four digits in a row.
_FOUR_DIGITS = re.compile(r"[0-9]{4}")

MIN_SECRET_LENGTH = 6
MAX_SECRETS = 10_000


def _forms(value: str) -> list[str]:
    """A value as it may appear: as is, and percent-encoded as in a query string or a form body."""
    forms = [value]
    for form in (quote(value, safe=""), quote_plus(value, safe="")):
        if form not in forms:
            forms.append(form)
    return forms


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i & 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def _mask_digits(s: str, keep_first: int, keep_last: int) -> str:
    """Replace digits (and an ID card's X) with `*`, except the first and last few; separators stay."""
    positions = [i for i, ch in enumerate(s) if ch.isdigit() or ch in "Xx"]
    hide = set(positions[keep_first:len(positions) - keep_last])
    return "".join("*" if i in hide else ch for i, ch in enumerate(s))


def _number(m: re.Match[str]) -> str:
    s = m.group(0)
    if m.group("spaced") is not None:
        return _mask_digits(s, 7, 0)
    if m.group("grouped") is not None:
        digits = s.replace(" ", "").replace("-", "")
        return _mask_digits(s, 0, 4) if 13 <= len(digits) <= 19 and luhn_ok(digits) else s
    plus = s.startswith("+")
    digits = s[1:] if plus else s
    n = len(digits)
    if n == 11 and _PHONE.fullmatch(digits):
        return s[:7 + plus] + "****"
    if n == 13 and digits.startswith("86") and _PHONE.fullmatch(digits, 2):
        return s[:9 + plus] + "****"
    if n == 18 and _ID_CARD.fullmatch(digits):
        return s[:6 + plus] + "*" * 8 + s[-4:]
    if not plus and digits.isdigit() and 13 <= n <= 19 and luhn_ok(digits):
        return "*" * (n - 4) + digits[-4:]
    return s


def _trie_pattern(values: Iterable[str]) -> str:
    """One regex for many literal values, shaped as a trie (`ab(?:c|d)`), so matching costs about
    one step per character of text whatever the number of values, unlike a flat `a|b|c` alternation."""
    trie: dict[str, Any] = {}
    for value in values:
        node = trie
        for ch in value:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        # Runs of single-child nodes are written out in a loop, so recursion only happens at branch
        # points: a 3000-character PEM key must not hit the recursion limit.
        run: list[str] = []
        while len(node) == 1 and "" not in node:
            (ch, node), = node.items()
            run.append(ch)
        literal = re.escape("".join(run))
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return literal
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return literal + ("(?:" + body + ")?" if "" in node else body)

    return emit(trie)


class RuleLike(Protocol):
    @property
    def pattern(self) -> str: ...
    @property
    def replace(self) -> str: ...



def _literally(value: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: value

class Redactor:
    """Built once per rule set; its methods are called on every call's log line, so everything is
    compiled here and each method has a fast path for text with nothing to redact."""

    def __init__(self, rules: Iterable[RuleLike] = ()) -> None:
        self._extra: list[tuple[re.Pattern[str], str]] = [(re.compile(r.pattern), r.replace) for r in rules]
        # Insertion-ordered, so the least recently registered values are the first dropped past
        # MAX_SECRETS (tokens rotate every few hours; a long-running gateway must not grow without
        # bound). Registering a value again moves it to the end, so long-lived keys that are
        # re-registered at each rules load are never the ones dropped.
        self._secrets: dict[str, None] = {}
        self._secrets_re: re.Pattern[str] | None = None

    # -- known secret values ------------------------------------------------------------------------

    def add_secret(self, value: str | None) -> None:
        """Mask this exact value wherever it appears (also in its URL-encoded forms). Values shorter
        than 6 characters are ignored: they would mask ordinary words and numbers."""
        if not value or len(value) < MIN_SECRET_LENGTH:
            return
        changed = False
        for form in _forms(value):
            if form in self._secrets:
                del self._secrets[form]  # re-inserted below: now the most recent
            else:
                changed = True
            self._secrets[form] = None
        while len(self._secrets) > MAX_SECRETS:
            del self._secrets[next(iter(self._secrets))]
        if changed:
            self._secrets_re = None  # rebuilt on next use: a burst of registrations compiles once

    def add_secrets(self, values: Iterable[str | None]) -> None:
        for value in values:
            self.add_secret(value)

    def discard_secret(self, value: str) -> None:
        for form in _forms(value):
            if form in self._secrets:
                del self._secrets[form]
                self._secrets_re = None

    @property
    def secret_count(self) -> int:
        return len(self._secrets)

    def _secret_pattern(self) -> re.Pattern[str] | None:
        if not self._secrets:
            return None
        pattern = self._secrets_re
        if pattern is None:
            # Assigned whole, so a thread reading it sees either the old or the new pattern.
            pattern = self._secrets_re = re.compile(_trie_pattern(list(self._secrets)))
        return pattern

    def known_bytes(self, data: bytes) -> bytes:
        """`data` with every known secret value masked, all other bytes untouched (an answer body a
        provider may have echoed a key or token into). One scan with the precompiled pattern."""
        pattern = self._secret_pattern()
        if pattern is None or not data:
            return data
        # surrogateescape round-trips any byte sequence, so a binary body comes back byte for byte.
        text = data.decode("utf-8", "surrogateescape")
        masked = pattern.sub(MASK, text)
        return data if masked == text else masked.encode("utf-8", "surrogateescape")

    # -- the stages ---------------------------------------------------------------------------------

    def _known(self, s: str) -> str:
        pattern = self._secret_pattern()
        return s if pattern is None else pattern.sub(MASK, s)

    @staticmethod
    def _named(s: str) -> str:
        if not _mentions_secret_name(s):
            return s
        if "ookie" in s or "OOKIE" in s:
            s = _COOKIE_LINE.sub(lambda m: m.group("head") + MASK, s)
        s = _KEY_VALUE.sub(_key_value, s)
        if "<" in s:
            s = _XML_ELEMENT.sub(_xml_element, s)
        return _BEARER.sub(lambda m: m.group("scheme") + " " + MASK, s)

    @staticmethod
    def _numbers(s: str) -> str:
        if not _FOUR_DIGITS.search(s):
            return s
        return _NUMBER.sub(_number, s)

    def _rules(self, s: str) -> str:
        for pattern, replace in self._extra:
            # A function, so the replacement is taken literally (no backslash groups).
            s = pattern.sub(_literally(replace), s)
        return s

    # -- public -------------------------------------------------------------------------------------

    def text(self, s: str) -> str:
        """Free text: an error message, a provider's error detail, a header value."""
        if not s:
            return s
        return self._rules(self._numbers(self._named(self._known(s))))

    def value(self, s: str) -> str:
        """A value whose name is already known not to be secret: known secrets, numbers, extra rules."""
        if not s:
            return s
        return self._rules(self._numbers(self._known(s)))

    def url(self, u: str) -> str:
        """A URL: secret-named query parameters become `***` (their names stay), the password of a
        `user:password@` becomes `***`, everything else is redacted as text."""
        if not u:
            return u
        u = self._known(u)
        head, qmark, rest = u.partition("?")
        query, hash_, fragment = rest.partition("#")
        if not qmark:
            head, hash_, fragment = head.partition("#")
        scheme_end = head.find("://")
        if scheme_end >= 0:
            authority_end = head.find("/", scheme_end + 3)
            authority = head[scheme_end + 3:] if authority_end < 0 else head[scheme_end + 3:authority_end]
            if "@" in authority:
                userinfo, _, host = authority.rpartition("@")
                user, colon, _password = userinfo.partition(":")
                masked = f"{user}:{MASK}@{host}" if colon else authority
                head = head[:scheme_end + 3] + masked + ("" if authority_end < 0 else head[authority_end:])
        head = self._numbers(head)
        if query:
            query = "&".join(self._param(p) for p in query.split("&"))
        if fragment:
            fragment = self._numbers(self._named(fragment))
        return self._rules(head + qmark + query + hash_ + fragment)

    def _param(self, part: str) -> str:
        name, eq, value = part.partition("=")
        if not eq:
            return self._numbers(part)
        if is_secret_name(unquote_plus(name)):
            return name + "=" + MASK
        if "%" in value:
            # Percent-encoding glues letters to digits (`%E6%9C%BA13812345678` is `机13812345678`):
            # look at the decoded value, and write it back encoded only if something was masked.
            decoded = unquote_plus(value)
            redacted = self._numbers(decoded)
            return name + "=" + (value if redacted == decoded else quote_plus(redacted, safe="*"))
        return name + "=" + self._numbers(value)

    def headers(self, h: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
        """Secret-named headers (Authorization, Cookie, X-Api-Key, ...) become `***`, other values
        are redacted as text. Repeated headers are joined with `, ` as HTTP allows."""
        items = h.items() if isinstance(h, Mapping) else h
        out: dict[str, str] = {}
        for name, value in items:
            redacted = MASK if is_secret_name(name) else self.text(str(value))
            out[name] = f"{out[name]}, {redacted}" if name in out else redacted
        return out

    def json_value(self, obj: Any, _depth: int = 0) -> Any:
        """A parsed JSON value: secret-named fields become `"***"` whatever their value (an object
        named `credentials` is hidden whole), strings are redacted as text. Past 64 levels of nesting
        the rest is masked: nothing real nests that deep, and a hostile body must not blow the stack."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            if _depth >= 64:
                return MASK
            return {k: MASK if isinstance(k, str) and is_secret_name(k) else self.json_value(v, _depth + 1)
                    for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            if _depth >= 64:
                return MASK
            return [self.json_value(v, _depth + 1) for v in obj]
        return obj

    def body(self, content_type: str, body: bytes) -> str:
        """A request or response body, for a log line: JSON is parsed and redacted field by field
        (then written compactly), form bodies parameter by parameter, anything else as text. Callers
        cut the result to length after redaction, never before: a cut could leave half a secret."""
        ct = (content_type or "").lower()
        text = body.decode(_charset(ct), "replace") if body else ""
        if not text:
            return text
        if "json" in ct:
            try:
                parsed = json.loads(text)
            except (ValueError, RecursionError):
                return self.text(text)
            return json.dumps(self.json_value(parsed), ensure_ascii=False, separators=(",", ":"))
        if "x-www-form-urlencoded" in ct:
            return self._rules("&".join(self._param(p) for p in self._known(text).split("&")))
        return self.text(text)


def _key_value(m: re.Match[str]) -> str:
    if not is_secret_name(m.group("name")):
        return m.group(0)
    val = m.group("val")
    quote_char = val[0] if val[0] in "\"'" and len(val) > 1 and val[-1] == val[0] else ""
    return m.group(0)[: m.start("val") - m.start()] + quote_char + MASK + quote_char


def _xml_element(m: re.Match[str]) -> str:
    name = m.group("name")
    if not is_secret_name(name):
        return m.group(0)
    return f"<{name}>{MASK}</{name}>"


def _charset(content_type: str) -> str:
    name = declared_charset(content_type) or "utf-8"
    try:
        "".encode(name)
    except LookupError:
        return "utf-8"
    return name
