"""Byte-level BPE tokenizer for Java, trained with `tokenizers` on a corpus's train split.

Lossless by construction: byte-level pre-tokenisation with no prefix space and no
normalisation, so ``decode(encode(x)) == x`` for any text (CRLF, tabs, emoji...).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from kaffee.errors import KaffeeError
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
PAD = "<|pad|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
SPECIAL_TOKENS = [EOS, PAD, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE]

# Split like GPT-2 but keep runs of spaces/tabs whole (indentation is one piece) and
# never merge across a newline, so a token never straddles two lines.
_JAVA_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\r?\n|[ \t]+(?!\S)|[ \t]+"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by ByteLevel."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


@dataclass
class TokenizerTrainConfig:
    vocab_size: int = 16384  # total vocabulary, special tokens included
    min_frequency: int = 2  # merges seen fewer times are not learned
    max_bytes: int = 400_000_000  # stop feeding text after this many bytes (keeps RAM/time bounded)


class KaffeeTokenizer:
    """A thin, typed wrapper over a `tokenizers.Tokenizer` with Kaffee's special tokens."""

    def __init__(self, tokenizer: Tokenizer):
        self.tk = tokenizer
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise KaffeeError(
                f"tokenizer lacks Kaffee's special tokens {missing}; train one with `kaffee tokenizer train`"
            )
        self.eos_id = tokenizer.token_to_id(EOS)
        self.pad_id = tokenizer.token_to_id(PAD)
        self.fim_prefix_id = tokenizer.token_to_id(FIM_PREFIX)
        self.fim_suffix_id = tokenizer.token_to_id(FIM_SUFFIX)
        self.fim_middle_id = tokenizer.token_to_id(FIM_MIDDLE)
        self.special_ids = frozenset(tokenizer.token_to_id(t) for t in SPECIAL_TOKENS)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> KaffeeTokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise KaffeeError(f"no tokenizer file at {path}")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises plain Exception on bad JSON
            raise KaffeeError(f"{path} is not a valid tokenizer file: {exc}") from exc

    @classmethod
    def train(cls, texts: Iterable[str], config: TokenizerTrainConfig | None = None) -> KaffeeTokenizer:
        config = config or TokenizerTrainConfig()
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_JAVA_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=True,
        )
        tk.train_from_iterator(_capped(texts, config.max_bytes), trainer=trainer)
        return cls(tk)

    def save(self, path: str | Path) -> None:
        self.tk.save(str(path))

    # -- use --------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def fim_ids(self, prefix: Sequence[int], suffix: Sequence[int], middle: Sequence[int] = ()) -> list[int]:
        """The fill-in-the-middle layout (PSM): ``<pre> prefix <suf> suffix <mid> middle``.

        The one definition shared by training (``training/data.py``, with the middle) and
        serving (``server/context.py``, which leaves the middle for the model to write).
        """
        return [self.fim_prefix_id, *prefix, self.fim_suffix_id, *suffix, self.fim_middle_id, *middle]

    def decode(self, ids: list[int]) -> str:
        return self.tk.decode(ids, skip_special_tokens=False)

    @cached_property
    def id_to_bytes(self) -> list[bytes]:
        """The exact bytes each id stands for (special tokens: their literal text)."""
        inverse = {c: b for b, c in _bytes_to_unicode().items()}
        out: list[bytes] = []
        for i in range(self.vocab_size):
            piece = self.tk.id_to_token(i) or ""
            if i in self.special_ids:
                out.append(piece.encode())
            else:
                out.append(bytes(inverse.get(ch, 0) for ch in piece))
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self.id_to_bytes
        return b"".join(table[i] for i in ids)


def _capped(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    seen = 0
    for t in texts:
        yield t
        seen += len(t)
        if seen >= max_bytes:
            return
