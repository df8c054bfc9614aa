"""Scrub secrets from Java text so that no model can learn (and later suggest) them.

Well-tested patterns in the style of gitleaks / detect-secrets (which is too slow per file
at corpus scale): private key blocks, cloud and SaaS tokens, JWTs, credentials in URLs,
and string literals assigned to suspicious names (password, secret, api key, token, ...).
A secret is replaced *inside its literal* by :data:`PLACEHOLDER`, so the code stays valid
Java. :func:`scrub` returns the new text and a count per kind (stats.json ``secrets``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

PLACEHOLDER = "<SECRET>"

# A key block, possibly split over concatenated string literals ("..." + "...") and lines.
_KEY_BODY = r"[A-Za-z0-9+/=\s\\\"+:.,-]*?"
PRIVATE_KEY = re.compile(
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----" + _KEY_BODY + r"-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"
    r"|-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----[A-Za-z0-9+/=\s\\\"+:.,-]{0,8192}"
)

# kind -> pattern; the whole match (or group "s" when present) is replaced.
TOKEN_PATTERNS: dict[str, re.Pattern[str]] = {
    "aws_access_key": re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}(?![A-Z0-9])"),
    "gcp_api_key": re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])"),
    "gcp_oauth_token": re.compile(r"(?<![\w-])ya29\.[0-9A-Za-z_-]{20,}"),
    "github_token": re.compile(r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
    "slack_token": re.compile(r"(?<![\w-])xox[abposr]-[A-Za-z0-9-]{10,}"),
    "slack_webhook": re.compile(r"https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+"),
    "stripe_key": re.compile(r"(?<![\w])(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{20,}"),
    "jwt": re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    "url_password": re.compile(r"://[^\s:/@\"'$]{1,64}:(?P<s>[^\s/@\"'$]{3,128})@"),
}  # fmt: skip
# Cheap substring tests: a pattern runs only on text containing one of its literals.
PREFILTER: dict[str, tuple[str, ...]] = {
    "aws_access_key": ("AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "APKA"),
    "gcp_api_key": ("AIza",),
    "gcp_oauth_token": ("ya29.",),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "slack_token": ("xox",),
    "slack_webhook": ("hooks.slack.com",),
    "stripe_key": ("_live_", "_test_"),
    "jwt": ("eyJ",),
    "url_password": ("://",),
}

# A string literal given to a name that ends in a suspicious word: password = "v", dbPassword: "v",
# "db.password": "v", put("apiKey", "v"), setPassword("v"), .token("v"). Matched on lower-cased text and
# anchored on the word (fast); the value is in a lookahead so a literal can also start the next match.
_WORDS = r"pass(?:word|wd|phrase)|passwd|(?<![\w$])pass|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?key|private[_-]?key|token|credential"
_VALUE = r'(?="(?P<v>(?:[^"\\\n]|\\.){4,300})")'
NAMED_STRING = re.compile(
    rf'(?:(?:{_WORDS})s?\d*(?:"?\s*(?:=|:|\+=)|"\s*,)'  # assignment, JSON-ish key, quoted key then comma
    rf'|(?:(?<![\w$])(?<!new )|(?<=set)|(?<=with))_?(?:{_WORDS})\s*\()'  # setter / builder call, not `new T(`
    rf"\s*{_VALUE}"
)
_WORD_LITERALS = ("pass", "pwd", "secret", "apikey", "api_key", "api-key", "accesskey", "access_key", "access-key",
                  "authkey", "auth_key", "auth-key", "privatekey", "private_key", "private-key", "token", "credential")
# Values that are clearly not credentials: messages, property keys, placeholders, names.
_BENIGN = re.compile(r"\s|[^\x00-\x7f]|\\u[0-9a-fA-F]{4}|\$\{|%[sdn]|\{\d\}|^<[^>]*>$|^\*+$|^[A-Z][A-Z0-9_]*$")
_PATH_LIKE = re.compile(r"^[\w-]+(?:[./][\w-]+)+$")  # property keys, class names, paths, OIDs
_BENIGN_WORDS = {"password", "passwd", "secret", "token", "apikey", "api_key", "credentials", "changeme", "null", "none"}


@dataclass
class SecretsConfig:
    """Knobs of the assignment-based detector."""

    min_entropy: float = 3.5  # bits/char above which a value is called high_entropy_secret
    min_entropy_len: int = 16  # shortest value the entropy label applies to


def shannon_entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _is_benign(value: str) -> bool:
    low = value.lower()
    if low in _BENIGN_WORDS or PLACEHOLDER in value:
        return True
    if _BENIGN.search(value):
        return True
    # a dotted or slashed value is a name, unless it looks random (AWS secret keys contain '/')
    randomish = len(value) >= 20 and not value.isalpha() and value.lower() != value and value.upper() != value
    return bool(_PATH_LIKE.match(value)) and not (randomish and any(c.isdigit() for c in value))


def scrub(text: str, cfg: SecretsConfig | None = None) -> tuple[str, Counter[str]]:
    """Replace every secret found in ``text`` by :data:`PLACEHOLDER`; count them by kind."""
    cfg = cfg or SecretsConfig()
    found: Counter[str] = Counter()
    if "PRIVATE KEY" in text:
        text, n = PRIVATE_KEY.subn(PLACEHOLDER, text)
        if n:
            found["private_key"] += n
    for kind, pattern in TOKEN_PATTERNS.items():
        if not any(lit in text for lit in PREFILTER[kind]):
            continue

        def repl(m: re.Match[str], kind: str = kind) -> str:
            found[kind] += 1
            if "s" in m.re.groupindex:
                return m.group(0)[: m.start("s") - m.start()] + PLACEHOLDER + m.group(0)[m.end("s") - m.start() :]
            return PLACEHOLDER

        text = pattern.sub(repl, text)

    lower = text.lower()
    if len(lower) != len(text):  # a few non-ASCII letters change length when lower-cased
        lower = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    if not any(w in lower for w in _WORD_LITERALS):
        return text, found
    pieces, last = [], 0
    for m in NAMED_STRING.finditer(lower):
        value = text[m.start("v") : m.end("v")]
        if m.start("v") < last or _is_benign(value):
            continue
        high = len(value) >= cfg.min_entropy_len and shannon_entropy(value) >= cfg.min_entropy
        found["high_entropy_secret" if high else "password_literal"] += 1
        pieces += [text[last : m.start("v")], PLACEHOLDER]
        last = m.end("v")
    if pieces:
        text = "".join(pieces) + text[last:]
    return text, found
