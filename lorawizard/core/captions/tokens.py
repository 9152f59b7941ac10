"""Token counts for captions: CLIP-L and T5-XXL, against the budgets and with the tokenizers of the model family
(core.profile: for FLUX.1-dev CLIP's 77, the rest is cut off, and T5's 512).

Real counts come from the tokenizer files the models step fetches into `paths.tokenizers` (the folders
sd-scripts reads with `--tokenizer_cache_dir`): `openai_clip-vit-large-patch14` and `google_t5-v1_1-xxl`.
They are read with the `tokenizers` package only (no torch, no transformers):

* a `tokenizer.json` in the folder is used as is;
* otherwise CLIP's `vocab.json` + `merges.txt` are assembled into the same byte-level BPE pipeline
  transformers builds for `CLIPTokenizerFast`, and T5's `spiece.model` (a sentencepiece protobuf, parsed
  here without protobuf) into the unigram pipeline of `T5TokenizerFast`.

Counts include the special tokens the encoders see: CLIP `<|startoftext|> … <|endoftext|>` (so 77 is
the hard limit, 75 for the text), T5 `… </s>`.

Without the files the counts are an ESTIMATE (`TokenCounter.exact` is False; the UI must say so):
* CLIP: the caption is split like CLIP's pre-tokenizer (letter runs, single digits, punctuation runs),
  each letter run costs 1 token per started 8 letters (common English words are one BPE token; long or
  rare words split), each digit and each punctuation run 1, plus the 2 special tokens.
* T5: words cost 1 token per started 6 letters (sentencepiece splits more than CLIP's BPE), each
  punctuation character 1, digit runs 1 per started 2 digits, plus `</s>`.
Both lean high on purpose, so an estimate flags a borderline caption rather than missing it.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lorawizard.core.profile import DEFAULT_FAMILY, ModelFamily

_CLIP, _T5 = DEFAULT_FAMILY.text_encoder("clip_l"), DEFAULT_FAMILY.text_encoder("t5xxl")
# The default family's budgets; a session's are its family's (`budgets(family)`, carried by its TokenCounter).
CLIP_LIMIT = _CLIP.max_tokens
T5_LIMIT = _T5.max_tokens
CLIP_DIR = _CLIP.tokenizer.folder
T5_DIR = _T5.tokenizer.folder


def budgets(family: ModelFamily | None) -> tuple[int | None, int]:
    """(CLIP-L budget, None when the family has no CLIP-L; T5 budget): FLUX.1 77/512, schnell 77/256, Chroma -/512."""
    if family is None:
        return CLIP_LIMIT, T5_LIMIT
    return family.budget("clip_l"), family.budget("t5xxl") or T5_LIMIT

# CLIP's pre-tokenizer regex, with `re`-compatible classes: letters, single digits, other non-space runs.
_CLIP_SPLIT = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)
_T5_SPLIT = re.compile(r"[^\W\d_]+|\d+|[^\s\w]|_")


class Counter(Protocol):
    def __call__(self, texts: Sequence[str]) -> list[int]: ...


def estimate_clip(text: str) -> int:
    tokens = 2
    for piece in _CLIP_SPLIT.findall(text.lower()):
        if piece[0].isalpha():
            tokens += (len(piece) + 7) // 8
        else:
            tokens += 1
    return tokens


def estimate_t5(text: str) -> int:
    tokens = 1
    for piece in _T5_SPLIT.findall(text):
        if piece[0].isalpha():
            tokens += (len(piece) + 5) // 6
        elif piece[0].isdigit():
            tokens += (len(piece) + 1) // 2
        else:
            tokens += 1
    return tokens


@dataclass
class TokenCounter:
    """Counts (clip, t5) per text, caching by text; `exact` says whether real tokenizers are behind it."""

    clip_count: Counter
    t5_count: Counter
    exact: bool
    source: str  # for people: "tokenizers in …" or why it is an estimate
    _cache: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    clip_limit: int | None = CLIP_LIMIT  # the family's budgets (None: no CLIP-L, its count is not checked)
    t5_limit: int = T5_LIMIT

    def over(self, clip: int, t5: int) -> tuple[bool, bool]:
        """(over CLIP-L's budget, over T5's) for one caption's counts."""
        return self.clip_limit is not None and clip > self.clip_limit, t5 > self.t5_limit

    def budget_line(self, clip: int, t5: int) -> str:
        """`CLIP 12/77 · T5 14/512`, or `T5 14/512` for a family without CLIP-L."""
        t5_part = f"T5 {t5}/{self.t5_limit}"
        return t5_part if self.clip_limit is None else f"CLIP {clip}/{self.clip_limit} · {t5_part}"

    @property
    def label(self) -> str:
        return "tokens" if self.exact else "tokens (estimate)"

    def count(self, text: str) -> tuple[int, int]:
        hit = self._cache.get(text)
        if hit is None:
            hit = self._cache[text] = (self.clip_count([text])[0], self.t5_count([text])[0])
        return hit

    def count_many(self, texts: Iterable[str]) -> list[tuple[int, int]]:
        # The Captions screen counts on the UI thread (typing) and in a worker (a bulk change) at once: the result
        # comes from this call's own `found`, never from a second look-up that the other thread's trim can miss.
        texts = list(texts)
        cache = self._cache
        found: dict[str, tuple[int, int]] = {}
        for text in texts:
            hit = cache.get(text)
            if hit is not None:
                found[text] = hit
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            for text, clip, t5 in zip(missing, self.clip_count(missing), self.t5_count(missing), strict=True):
                found[text] = cache[text] = (clip, t5)
        if len(cache) > 200_000:  # bounded: a long editing session must not grow without end
            cache.clear()
            cache.update(found)
        return [found[t] for t in texts]


def estimate_counter(reason: str = "tokenizers not fetched yet", family: ModelFamily | None = None) -> TokenCounter:
    clip_limit, t5_limit = budgets(family)
    return TokenCounter(
        clip_count=lambda texts: [estimate_clip(t) for t in texts],
        t5_count=lambda texts: [estimate_t5(t) for t in texts],
        exact=False,
        source=f"estimate ({reason})",
        clip_limit=clip_limit, t5_limit=t5_limit,
    )


def load_counter(tokenizers_dir: Path | None, family: ModelFamily | None = None) -> TokenCounter:
    """Real counters when both tokenizers load from `tokenizers_dir`, else the documented estimate; the budgets are
    `family`'s (None: the default family's)."""
    if tokenizers_dir is None:
        return estimate_counter("no tokenizers folder", family)
    clip_dir, t5_dir = tokenizers_dir / CLIP_DIR, tokenizers_dir / T5_DIR
    if not clip_dir.is_dir() or not t5_dir.is_dir():
        return estimate_counter(f"tokenizers not fetched yet: no {CLIP_DIR} and {T5_DIR} in {tokenizers_dir}", family)
    try:
        clip = load_clip_tokenizer(clip_dir)
        t5 = load_t5_tokenizer(t5_dir)
    except TokenizerError as exc:
        return estimate_counter(str(exc), family)
    clip_limit, t5_limit = budgets(family)
    return TokenCounter(
        clip_count=_encoder(clip),
        t5_count=_encoder(t5),
        exact=True,
        source=f"tokenizers in {tokenizers_dir}",
        clip_limit=clip_limit, t5_limit=t5_limit,
    )


class TokenizerError(Exception):
    """A tokenizer folder that cannot be read; one line for a person."""


def _encoder(tokenizer: Any) -> Counter:
    def count(texts: Sequence[str]) -> list[int]:
        if len(texts) == 1:
            return [len(tokenizer.encode(texts[0]).ids)]
        return [len(e.ids) for e in tokenizer.encode_batch(list(texts))]

    return count


def load_clip_tokenizer(folder: Path) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if (folder / "tokenizer.json").is_file():
        return _from_file(folder / "tokenizer.json")
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not vocab.is_file() or not merges.is_file():
        raise TokenizerError(f"{folder}: neither tokenizer.json nor vocab.json + merges.txt")
    try:
        bpe = models.BPE.from_file(
            str(vocab), str(merges), unk_token="<|endoftext|>", continuing_subword_prefix="", end_of_word_suffix="</w>"
        )
        ids = json.loads(vocab.read_text(encoding="utf-8"))
    except Exception as exc:  # tokenizers raises plain Exceptions for malformed files
        raise TokenizerError(f"{folder}: cannot read the CLIP vocabulary ({exc})") from None
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    if bos not in ids or eos not in ids:
        raise TokenizerError(f"{folder}/vocab.json: no {bos} / {eos} tokens (not a CLIP vocabulary)")
    tokenizer.post_processor = processors.RobertaProcessing((eos, ids[eos]), (bos, ids[bos]), trim_offsets=False, add_prefix_space=False)
    return tokenizer


def load_t5_tokenizer(folder: Path) -> Any:
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    if (folder / "tokenizer.json").is_file():
        return _from_file(folder / "tokenizer.json")
    spm = folder / "spiece.model"
    if not spm.is_file():
        raise TokenizerError(f"{folder}: neither tokenizer.json nor spiece.model")
    try:
        pieces, charsmap = parse_sentencepiece(spm.read_bytes())
    except (OSError, ValueError, struct.error) as exc:
        raise TokenizerError(f"{folder}/spiece.model: not a sentencepiece model ({exc})") from None
    unk_id = next((i for i, (_, _, kind) in enumerate(pieces) if kind == 2), 2)
    tokenizer = Tokenizer(models.Unigram([(piece, score) for piece, score, _ in pieces], unk_id, False))
    steps: list[normalizers.Normalizer] = [normalizers.NFKC()]  # sentencepiece's nmt_nfkc, near enough when the model carries no charsmap
    if charsmap:
        try:
            steps = [normalizers.Precompiled(charsmap)]
        except Exception:  # tokenizers raises a bare Exception for a charsmap it cannot parse
            pass
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    eos = next((i for i, (piece, _, _) in enumerate(pieces) if piece == "</s>"), None)
    if eos is None:
        raise TokenizerError(f"{folder}/spiece.model: no </s> piece (not a T5 model)")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return tokenizer


def _from_file(path: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:
        raise TokenizerError(f"{path}: cannot read it ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None


# ---------------------------------------------------------------- sentencepiece without protobuf


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> Iterable[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; values: int, bytes or float."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack("<f", data[pos : pos + 4])[0], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def parse_sentencepiece(data: bytes) -> tuple[list[tuple[str, float, int]], bytes]:
    """`ModelProto` → ([(piece, score, type)], precompiled charsmap). Type 1 normal, 2 unknown, 3 control."""
    pieces: list[tuple[str, float, int]] = []
    charsmap = b""
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:  # repeated SentencePiece pieces
            piece, score, kind = "", 0.0, 1
            for sub, sub_wire, sub_value in _fields(value):
                if sub == 1 and sub_wire == 2:
                    piece = sub_value.decode("utf-8")
                elif sub == 2 and sub_wire == 5:
                    score = float(sub_value)
                elif sub == 3 and sub_wire == 0:
                    kind = int(sub_value)
            pieces.append((piece, score, kind))
        elif number == 3 and wire == 2:  # NormalizerSpec
            for sub, sub_wire, sub_value in _fields(value):
                if sub == 2 and sub_wire == 2:
                    charsmap = bytes(sub_value)
    if not pieces:
        raise ValueError("no pieces")
    return pieces, charsmap
