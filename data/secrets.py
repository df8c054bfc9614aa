"""Scrub secrets from Java text so that no model can learn (and later suggest) them.

Well-tested patterns in the style of gitleaks / detect-secrets (which is too slow per file
at corpus scale): private key blocks, cloud and SaaS tokens, JWTs, credentials in URLs and
connection strings (``?password=``, ``;Password=``, Oracle ``user/pass@``), ``Authorization``
header values, string literals given to credential APIs (``getConnection(url, "u", "p")``,
``new BasicAWSCredentials("id", "secret")``, ``ftp.login``, JavaMail ``connect``, KeyStore
``"pw".toCharArray()``, ``new SecretKeySpec("key".getBytes(), ...)``, ``signWith``), Spring
``${db.password:default}``, ``password: value`` in comments, and string literals assigned to suspicious
names (password, secret, api key, token, ...), passphrases with spaces included.
A secret is replaced *inside its literal* by :data:`PLACEHOLDER`, so the code stays valid
Java. :func:`scrub` returns the new text and a count per kind (stats.json ``secrets``).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from dataclasses import dataclass

PLACEHOLDER = "<SECRET>"

# A key block, possibly split over concatenated string literals ("..." + "...") and lines.
_KEY_BODY = r"[A-Za-z0-9+/=\s\\\"+:.,-]*?"
PRIVATE_KEY = re.compile(
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"
    + _KEY_BODY
    + r"-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"
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
    "url_password": re.compile(r"://[^\s:/@\"'$]{0,64}:(?P<s>[^\s/@\"'$]{3,128})@"),
    "npm_token": re.compile(r"(?<![\w-])npm_[A-Za-z0-9]{36}(?![\w-])"),
    "twilio_key": re.compile(r"[\"'=:/\s](?P<s>(?:SK|AC)[0-9a-f]{32})(?![\w-])"),  # a leading set scans fast
    "sendgrid_key": re.compile(r"(?<![\w-])SG\.[\w-]{22}\.[\w-]{43}(?![\w-])"),
    "gitlab_token": re.compile(r"(?<![\w-])gl(?:pat|dt|ptt|rt)-[\w-]{20,}"),
    "pypi_token": re.compile(r"pypi-AgEIcHlwaS5vcmc[\w-]{50,}"),
    "openai_key": re.compile(r"(?<![\w-])sk-(?:(?:proj|svcacct|admin)-[\w-]{20,}|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})"),
    "gcp_oauth_secret": re.compile(r"(?<![\w-])GOCSPX-[\w-]{28}"),
    "shopify_token": re.compile(r"(?<![\w-])shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"),
    # gitleaks huggingface-access-token / -organization-api-token: hf_ or api_org_ and 34 letters
    "huggingface_token": re.compile(r"(?<![\w-])(?:hf|api_org)_[A-Za-z0-9]{34}(?![\w-])"),
    # gitleaks anthropic-api-key / anthropic-admin-api-key: sk-ant-api03-<93>AA (any length here)
    "anthropic_key": re.compile(r"(?<![\w-])sk-ant-(?:api|admin|oat)\d\d-[\w-]{20,}"),
    # the value of an Authorization header in a string literal: "Bearer <token>" (>= 16 chars, a digit)
    "bearer_token": re.compile(r"\"(?:Authorization:\s*)?Bearer\s+(?P<s>(?=[\w.~+/-]*\d)[\w.~+/-]{16,}=*)"),
}  # fmt: skip
# Cheap substring tests: a pattern runs only on text containing one of its literals.
PREFILTER: dict[str, tuple[str, ...]] = {
    "aws_access_key": (
        "AKIA",
        "ASIA",
        "ABIA",
        "ACCA",
        "AGPA",
        "AIDA",
        "AROA",
        "AIPA",
        "ANPA",
        "ANVA",
        "APKA",
    ),
    "gcp_api_key": ("AIza",),
    "gcp_oauth_token": ("ya29.",),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "slack_token": ("xox",),
    "slack_webhook": ("hooks.slack.com",),
    "stripe_key": ("_live_", "_test_"),
    "jwt": ("eyJ",),
    "url_password": ("://",),
    "npm_token": ("npm_",),
    "twilio_key": ("SK", "AC"),
    "sendgrid_key": ("SG.",),
    "gitlab_token": ("glpat-", "gldt-", "glptt-", "glrt-"),
    "pypi_token": ("pypi-AgEIcHlwaS5vcmc",),
    "openai_key": ("sk-",),
    "gcp_oauth_secret": ("GOCSPX-",),
    "shopify_token": ("shpat_", "shpca_", "shppa_", "shpss_"),
    "huggingface_token": ("hf_", "api_org_"),
    "anthropic_key": ("sk-ant-",),
    "bearer_token": ("Bearer",),
}

# Patterns matched on the lower-cased text (same offsets); group "s" is replaced. Patterns start with a
# literal, not a look-behind, so that the regex engine can skip ahead to candidates (10x faster).
LOWER_PATTERNS: dict[str, re.Pattern[str]] = {
    # key=value pairs of connection strings and query strings: ?user=u&password=p, ;Password=p;, AccountKey=k
    # (no spaces around "=": `; password = x` and `&& pass == 0` are Java)
    "conn_string_password": re.compile(
        r"(?:password|passwd|pwd|pass|accountkey|sharedaccesskey)=(?P<s>[^=&;\"'\s\\][^&;\"'\s\\]*)"
    ),
    "oracle_password": re.compile(r"jdbc:oracle:\w+:[^/@\s\"':]+/(?P<s>[^@\s\"']+)@"),
    # JSON inside a Java string: \"password\":\"value\"
    "json_password": re.compile(r"(?:pass(?:word|wd|phrase)?|pwd|secret|api_?key|token|private_key(?:_id)?)\\\"\s*:\s*\\\"(?P<s>[^\"\\\n]{3,300})\\\""),
    "basic_auth": re.compile(r"basic(?<![\w-]basic)\s+(?P<s>[a-z0-9+/]{8,}={0,2})(?![\w+/=-])"),
    # a Spring property's default value: @Value("${db.password:Sup3rS3cret!}")
    "spring_default": re.compile(r"\$\{[\w.-]*(?:pass(?:word|wd|phrase)?|pwd|secret|api[_-]?key|token|credentials?)"
                                 r"[\w.-]*:(?P<s>[^}\s\"'$]{3,300})\}"),
    # key: value or key=value in a comment (checked after): // password: S3cret99, /* db.password=S3cret99 */
    "comment_password": re.compile(r"(?:pass(?:word|wd|phrase)?|pwd|secret|api[_-]?key|token)\s*[:=]\s*"
                                   r"(?P<s>[^\s\"'`<>(){}\[\];,]{6,128})"),
}  # fmt: skip
LOWER_PREFILTER: dict[str, tuple[str, ...]] = {
    "conn_string_password": ("pass", "pwd", "accountkey", "sharedaccesskey"),
    "oracle_password": ("jdbc:oracle:",),
    "json_password": ('\\"',),
    "basic_auth": ("basic ",),
    "spring_default": ("${",),
    "comment_password": ("//", "/*", "* "),
}

# String literals handed to credential APIs; the secret is an argument given by position.
CREDENTIAL_CALL = re.compile(
    r"(?:(?<![\w$])(?:getConnection|PasswordAuthentication|UsernamePasswordCredentials|NTCredentials"
    r"|UsernamePasswordAuthenticationToken|BasicAWSCredentials|BasicSessionCredentials"
    r"|AwsBasicCredentials\.create|AwsSessionCredentials\.create|Twilio\.init|basicAuth"
    r"|withBasicAuth|setBasicAuth"
    r"|SecretKeySpec|signWith|setSigningKey|signingKey|hmacShaKeyFor|Algorithm\.HMAC(?:256|384|512))"  # keys
    r"|\.(?:basic|login|connect|auth|getKey|load|store|setKeyEntry|init)"  # FTP, JavaMail, Redis, KeyStore
    r"|(?<![\w$])(?:PasswordProtection|PBEKeySpec))\s*\("
)
_CREDENTIAL_CALL_LITERALS = ("getConnection", "PasswordAuthentication", "Credentials", "AuthenticationToken",
                             "Twilio.init", ".basic", "asicAuth", "SecretKeySpec", "signWith", "igningKey",
                             "hmacShaKeyFor", "HMAC", ".login", ".connect", ".auth", "toCharArray")  # fmt: skip
# where the secret is: the last argument, or any argument; None: by the number of arguments (getConnection)
_LAST, _ANY = -1, -2
_KEY_CALLS = ("SecretKeySpec", "signWith", "setSigningKey", "signingKey", "hmacShaKeyFor", "Algorithm.HMAC")
# KeyStore.load(in, "pw".toCharArray()), ks.getKey("alias", "pw".toCharArray()), kmf.init(ks, "pw".toCharArray()):
# generic names, so only a literal turned into a char[] counts
_CHAR_ARRAY_CALLS = (
    ".getKey",
    ".load",
    ".store",
    ".setKeyEntry",
    ".init",
    "PasswordProtection",
    "PBEKeySpec",
)
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')

# A string literal given to a name that ends in a suspicious word: password = "v", dbPassword: "v",
# "db.password": "v", put("apiKey", "v"), setPassword("v"), .token("v"). Matched on lower-cased text and
# anchored on the word (fast); the value is in a lookahead so a literal can also start the next match.
_WORDS = r"pass(?:word|wd|phrase)?|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?key|private[_-]?key|token|credential"
_VALUE = r'(?="(?P<v>(?:[^"\\\n]|\\.){4,300})")'
NAMED_STRING = re.compile(  # starts with the word, so the engine skips ahead fast; context is checked after
    rf'(?P<w>{_WORDS})(?:s?\d*(?:"?\s*(?:=|:|\+=)|(?P<qc>"\s*,))'  # assignment, JSON-ish key, quoted key then comma
    rf"|(?P<call>\s*\())"  # setter / builder call: set_password("v"), .token("v"), not getToken("v") or new T("v")
    rf"\s*{_VALUE}"
)
_WORD_LITERALS = (
    "pass",
    "pwd",
    "secret",
    "apikey",
    "api_key",
    "api-key",
    "accesskey",
    "access_key",
    "access-key",
    "authkey",
    "auth_key",
    "auth-key",
    "privatekey",
    "private_key",
    "private-key",
    "token",
    "credential",
)
# Values that are clearly not credentials: messages, property keys, placeholders, names.
_BENIGN = re.compile(
    r"\s|[^\x00-\x7f]|\\u[0-9a-fA-F]{4}|\\[nrt0]|\$\{|%[sdn]|\{\d\}|^<[^>]*>$|^\*+$|^[A-Z][A-Z0-9_]*$"
)
_PLACEHOLDER_LIKE = re.compile(r"\$\{|%[sdn]|\{\d\}|^<[^>]*>$|^\*+$")
_PATH_LIKE = re.compile(r"^[\w-]+(?:[./][\w-]+)+$")  # property keys, class names, paths, OIDs
_BENIGN_WORDS = {"password", "passwd", "secret", "token", "apikey", "api_key", "credentials", "changeme", "null", "none",
                 "true", "false"}  # fmt: skip
# A long identifier naming a secret rather than holding one: "SunTlsExtendedMasterSecret", "keyStorePassword".
_NAME_OF_SECRET = re.compile(r"[A-Za-z][\w.-]{11,}")
_SEGMENTS = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[_.-][A-Za-z0-9]+)+")
_SECRET_NOUNS = ("password", "passwd", "passphrase", "secret", "token", "credential", "apikey", "api_key")
# Words of messages and labels; a passphrase ("correct horse battery staple") has none of them.
_PASSPHRASE = re.compile(r"[\w!@#$%^&*+~-]+(?: [\w!@#$%^&*+~-]+){1,7}")  # 2-8 words, no code punctuation
_MESSAGE_WORDS = frozenset(
    "a an the to for of is are be been not no and or in on at by with from as your you please enter invalid "
    "wrong bad missing incorrect must should cannot can't failed error required new old confirm this that "
    "if was were user username password passphrase secret token key value empty null length characters".split()
)


@dataclass
class SecretsConfig:
    """Knobs of the assignment-based detector."""

    min_entropy: float = 3.5  # bits/char above which a value is called high_entropy_secret
    min_entropy_len: int = 16  # shortest value the entropy label applies to


def shannon_entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _is_passphrase(value: str) -> bool:
    if not _PASSPHRASE.fullmatch(value) or _PLACEHOLDER_LIKE.search(value) or value[-1] in ":.?!)":
        return False
    return not any(w.strip("\"'.,:;!?()").lower() in _MESSAGE_WORDS for w in value.split(" "))


def _is_benign(value: str, passphrase_ok: bool = False) -> bool:
    low = value.lower()
    if low in _BENIGN_WORDS or PLACEHOLDER in value:
        return True
    if passphrase_ok and " " in value:
        return not _is_passphrase(value)
    if _BENIGN.search(value):
        return True
    if _NAME_OF_SECRET.fullmatch(value) and any(w in low for w in _SECRET_NOUNS):
        return True
    if _SEGMENTS.fullmatch(value) and any(w in _SECRET_NOUNS for w in re.split(r"[_.-]", low)):
        return True  # "oauth_token", "db.password": a name
    # a dotted or slashed value is a name, unless it looks random (AWS secret keys contain '/')
    randomish = len(value) >= 20 and not value.isalpha() and value.lower() != value and value.upper() != value
    return bool(_PATH_LIKE.match(value)) and not (randomish and any(c.isdigit() for c in value))


def _in_comment(line: str) -> bool:
    """Whether the start of a line (up to a match) is inside a // or /* */ comment."""
    stripped = line.lstrip()
    return "//" in line or stripped.startswith(("*", "/*"))


def _accept(kind: str, value: str, before: str, line: str = "") -> bool:
    """Whether a value found by a LOWER_PATTERNS rule is a secret (not a placeholder, code or text);
    ``before``: the two characters before the match; ``line``: its line up to the match."""
    if not value or PLACEHOLDER in value or _PLACEHOLDER_LIKE.search(value) or value.lower() in _BENIGN_WORDS:
        return False
    if kind == "conn_string_password":  # a key of ?k=v&k=v or k=v;k=v, and not code like `x;pass=next();`
        return (before[-1:] in ("?", "&", ";", '"') or before in ("; ", "& ")) and "(" not in value
    if kind == "json_password":
        return not _is_benign(value, passphrase_ok=True)
    if kind == "spring_default":
        return not _is_benign(value)
    if kind == "comment_password":  # prose says "password: the user's password"; a password has digits
        return (before[-1:] in ("", " ", "\t", ".", "_", "-", "*", "/") and _in_comment(line)
                and sum(c.isdigit() for c in value) >= 2 and sum(c.isalpha() for c in value) >= 2
                and value[-1] not in ".:!?" and not _is_benign(value))  # fmt: skip
    if kind == "basic_auth":  # base64 of "user:password", or it is just the word "Basic" in prose
        try:
            decoded = base64.b64decode(value, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        return ":" in decoded and decoded.isprintable()
    return True


def _call_args(text: str, pos: int, limit: int = 600) -> list[tuple[int, int]] | None:
    """Spans of the top-level arguments of the call whose "(" ends at ``pos``; None when not closed nearby."""
    args, depth, start, i, end = [], 0, pos, pos, min(len(text), pos + limit)
    while i < end:
        c = text[i]
        if c in "\"'":  # skip a string or char literal
            j = i + 1
            while j < end and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            i = j
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                args.append((start, i))
                return args
            depth -= 1
        elif c == "," and depth == 0:
            args.append((start, i))
            start = i + 1
        elif c == ";":
            return None
        i += 1
    return None


def _credential_arguments(text: str) -> list[tuple[int, int, str]]:
    """Spans of string literals passed where a credential API takes its password / secret / token."""
    spans = []
    for m in CREDENTIAL_CALL.finditer(text):
        args = _call_args(text, m.end())
        if not args:
            continue
        name = m.group(0)
        char_array = name.startswith(_CHAR_ARRAY_CALLS)
        if name.startswith("getConnection"):  # (url, user, password) or DataSource's (user, password)
            positions: tuple[int, ...] = (len(args) - 1,) if len(args) in (2, 3) else ()
        elif name.startswith("NTCredentials"):  # (user, password, workstation, domain)
            positions = (1,)
        elif name.startswith((".login", ".auth")):  # FTPClient.login(user, pw), Jedis.auth([user,] pw)
            positions = (len(args) - 1,) if len(args) <= 2 and not _anonymous(text, args) else ()
        elif name.startswith(".connect"):  # JavaMail Transport/Store.connect([host, [port,]] user, pw)
            positions = (len(args) - 1,) if 2 <= len(args) <= 4 and _all_literals(text, args[-2:]) else ()
        elif name.startswith("signWith") or char_array:  # signWith(HS256, "k"), signWith("k", HS256)
            positions = tuple(range(len(args)))
        elif name.startswith(_KEY_CALLS):  # new SecretKeySpec("k".getBytes(), "AES"): the key comes first
            positions = (0,)
        else:  # (user or key id, password or secret[, session token])
            positions = (1, 2)
        for i in positions:
            if i >= len(args):
                continue
            a_start, a_end = args[i]
            lit = _literal(text, a_start, a_end)
            if not lit:
                continue  # not a plain literal (a variable, a call, a concatenation)
            if char_array and not text.startswith(".toCharArray()", lit.end()):
                continue
            value = text[lit.start() + 1 : lit.end() - 1]
            if name.startswith(_KEY_CALLS) and (i > 0 or len(args) > 1) and _ALGORITHM.fullmatch(value):
                continue  # new SecretKeySpec(bytes, "AES"), signWith(key, "HS256")
            if value and PLACEHOLDER not in value and not _PLACEHOLDER_LIKE.search(value):
                spans.append((lit.start() + 1, lit.end() - 1, "credential_argument"))
    return spans


_LITERAL_TAIL = re.compile(r"\s*(?:\.(?:\w+)\([\w.]*\))?\s*")  # "pw", "pw".toCharArray(), "k".getBytes(UTF_8)
_ALGORITHM = re.compile(r"(?i)AES|DES(?:ede)?|RC[24]|Blowfish|Hmac\w+|HS\d{3}|PBKDF2\w*|ChaCha20")


def _literal(text: str, a_start: int, a_end: int) -> re.Match[str] | None:
    """The string literal that is the whole argument text[a_start:a_end] (a call on it allowed), or None."""
    lit = _STRING.match(text, a_start + len(text[a_start:a_end]) - len(text[a_start:a_end].lstrip()))
    return lit if lit and _LITERAL_TAIL.fullmatch(text, lit.end(), a_end) else None


def _anonymous(text: str, args: list[tuple[int, int]]) -> bool:
    """login("anonymous", "me@host"): anonymous FTP, whose password is an e-mail address by convention."""
    lit = _literal(text, *args[0]) if len(args) == 2 else None
    return bool(lit) and text[lit.start() + 1 : lit.end() - 1].lower() in ("anonymous", "ftp")


def _all_literals(text: str, args: list[tuple[int, int]]) -> bool:
    return all(_literal(text, a, b) for a, b in args)


def _named_strings(text: str, lower: str, cfg: SecretsConfig) -> list[tuple[int, int, str]]:
    spans = []
    for m in NAMED_STRING.finditer(lower):
        if not _named_context(lower, m):
            continue
        value = text[m.start("v") : m.end("v")]
        if m.group("qc") and _after_brace(lower, m.start()):
            continue  # { "keystore.password", "Keystore-Kennwort" }: a resource bundle's key and its translation
        name = lower[m.start() : m.start("v")]
        if _is_benign(value, passphrase_ok="pass" in name or "pwd" in name or "secret" in name):
            continue
        high = len(value) >= cfg.min_entropy_len and shannon_entropy(value) >= cfg.min_entropy
        spans.append((m.start("v"), m.end("v"), "high_entropy_secret" if high else "password_literal"))
    return spans


def _named_context(lower: str, m: re.Match[str]) -> bool:
    """What the word needs before it: a bare "pass" starts a name; a call is a setter or a builder method."""
    start = m.start("w")
    before = lower[start - 1 : start] if start else ""
    if m.group("w") == "pass" and (before.isalnum() or before in "_$") and before:
        return False  # bypass = "...", compass: "..."
    if not m.group("call"):
        return True
    if before == "_":
        start -= 1
        before = lower[start - 1 : start] if start else ""
    if lower.endswith(("set", "with"), 0, start):
        return True
    return not (before and (before.isalnum() or before in "_$")) and not lower.endswith("new ", 0, start)


def _after_brace(lower: str, pos: int) -> bool:
    """Whether the string literal holding ``pos`` follows a "{" (an array initializer's first element)."""
    quote = lower.rfind('"', max(0, pos - 200), pos)
    return quote > 0 and lower[max(0, quote - 80) : quote].rstrip().endswith("{")


def _lower(text: str) -> str:
    lower = text.lower()
    if len(lower) != len(text):  # a few non-ASCII letters change length when lower-cased
        lower = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    return lower


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
            if "s" not in m.re.groupindex:
                found[kind] += 1
                return PLACEHOLDER
            if m.group("s") == PLACEHOLDER:
                return m.group(0)  # scrubbed before (a corpus scrubbed again)
            found[kind] += 1
            return m.group(0)[: m.start("s") - m.start()] + PLACEHOLDER + m.group(0)[m.end("s") - m.start() :]

        text = pattern.sub(repl, text)

    lower = _lower(text)
    spans: list[tuple[int, int, str]] = []
    for kind, pattern in LOWER_PATTERNS.items():
        if any(lit in lower for lit in LOWER_PREFILTER[kind]):
            spans += [(m.start("s"), m.end("s"), kind) for m in pattern.finditer(lower)
                      if _accept(kind, text[m.start("s") : m.end("s")], lower[max(0, m.start() - 2) : m.start()],
                                 lower[lower.rfind("\n", 0, m.start()) + 1 : m.start()])]  # fmt: skip
    if any(lit in text for lit in _CREDENTIAL_CALL_LITERALS):
        spans += _credential_arguments(text)
    if any(w in lower for w in _WORD_LITERALS):
        spans += _named_strings(text, lower, cfg)
    return _replace(text, spans, found), found


def _replace(text: str, spans: list[tuple[int, int, str]], found: Counter[str]) -> str:
    """Replace non-overlapping spans (the first one wins) by the placeholder."""
    pieces, last = [], 0
    for start, end, kind in sorted(spans):
        if start < last:
            continue
        found[kind] += 1
        pieces += [text[last:start], PLACEHOLDER]
        last = end
    return "".join(pieces) + text[last:] if pieces else text
