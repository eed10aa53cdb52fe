"""Text encoders: a phrase -> one text embedding of ``embed_dim`` numbers, which the prompt encoder's text
projection turns into sparse prompt tokens (sam_core.prompt_encoder.TextProjection).

Every encoder checks what it is handed the same way (``check_phrase``): a str, or bytes that decode as UTF-8;
not empty once surrounding whitespace is stripped; at most ``context_length`` tokens. Each refusal is a
ValueError (TypeError for a value that is no text at all) that says what is wrong and where.

Two encoders ship: ``EmbeddedTextEncoder`` here, a small transformer over the words the synthetic scenes can be
described with (sam_core.phrases.VOCABULARY), trained with the text path; and ``sam_core.clip_text.ClipTextEncoder``,
CLIP's text tower through open_clip, frozen, from a local checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from sam_core.phrases import VOCABULARY


def check_phrase(text, encoder: str = "text encoder") -> str:
    """The phrase as a str with surrounding whitespace removed. bytes are decoded as UTF-8.

    Raises TypeError for anything but str / bytes, ValueError for bytes that are not UTF-8 (naming the first bad
    byte and its offset), for a str that cannot be UTF-8 (surrogate escapes of such bytes, as sys.argv holds
    them) and for a phrase that is empty or only whitespace."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            bad = bytes(text)[err.start : err.start + 1]
            raise ValueError(
                f"text is not valid UTF-8: byte 0x{bad.hex()} at offset {err.start} ({err.reason}); "
                "pass a str, or bytes encoded as UTF-8"
            ) from None
    if not isinstance(text, str):
        raise TypeError(f"text must be a str (or UTF-8 bytes), got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        # A command-line argument or file name that was not UTF-8 reaches Python as a str holding surrogate
        # escapes (U+DC80..U+DCFF, one per undecodable byte): the same bad bytes, in str form.
        char = text[err.start]
        what = f"byte 0x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF else f"U+{ord(char):04X}"
        raise ValueError(
            f"text is not valid UTF-8: {what} at character {err.start} (a lone surrogate: bytes that were not "
            "UTF-8, decoded with surrogateescape); pass text encoded as UTF-8"
        ) from None
    phrase = text.strip()
    if not phrase:
        raise ValueError(f"text is empty{' (only whitespace)' if text else ''}: the {encoder} needs a phrase")
    return phrase


class TextEncoder(nn.Module):
    """The interface the predictor and the trainer use. Subclasses set ``embed_dim``, ``context_length`` and
    ``name`` and implement ``tokenize`` (already-checked phrases -> B x context_length token ids) and
    ``forward`` (token ids -> B x embed_dim)."""

    embed_dim: int
    context_length: int
    name: str = "text encoder"

    def tokenize(self, phrases: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, texts: Sequence[str | bytes]) -> torch.Tensor:
        """Check (check_phrase and the context length), tokenize and embed: B texts -> B x embed_dim."""
        if isinstance(texts, str | bytes | bytearray):
            raise TypeError("encode takes a list of phrases; wrap a single phrase in a list")
        phrases = [check_phrase(t, self.name) for t in texts]
        if not phrases:
            raise ValueError("no phrase to encode")
        device = next(self.parameters()).device
        return self(self.tokenize(phrases).to(device))

    def too_long(self, phrase: str, tokens: int) -> ValueError:
        return ValueError(
            f"text {phrase[:60]!r}{'...' if len(phrase) > 60 else ''} is {tokens} tokens long; the {self.name} "
            f"takes at most {self.context_length} (its context length)"
        )

    def record(self) -> dict:
        """{"kind", "config", "state"}: what a checkpoint keeps to rebuild this encoder (sam_core.text_model)."""
        raise NotImplementedError


PAD, CLS = "<pad>", "<cls>"


class WordTokenizer:
    """Lower-case words of a fixed vocabulary -> ids; id 0 pads, id 1 is the summary token put first.

    A word outside the vocabulary is refused, naming it: the embedded encoder never saw it, and an "unknown"
    id would make it answer for a phrase it cannot read."""

    def __init__(self, vocabulary: Sequence[str], context_length: int):
        words = list(dict.fromkeys(w.lower() for w in vocabulary))
        self.vocabulary = tuple(words)
        self.ids = {w: i + 2 for i, w in enumerate(words)}
        self.context_length = context_length  # tokens, the summary token included

    def __len__(self) -> int:
        return len(self.ids) + 2

    def words(self, phrase: str) -> list[str]:
        return re.findall(r"[^\s.,;:!?]+", phrase.lower())

    def __call__(self, phrases: Sequence[str], encoder: TextEncoder) -> torch.Tensor:
        rows = torch.zeros((len(phrases), self.context_length), dtype=torch.long)
        for row, phrase in enumerate(phrases):
            words = self.words(phrase)
            unknown = [w for w in words if w not in self.ids]
            if unknown:
                raise ValueError(
                    f"text {phrase!r}: {sorted(set(unknown))} not in the {encoder.name}'s vocabulary of "
                    f"{len(self.ids)} words ({', '.join(self.vocabulary)}); CLIP's encoder reads any words"
                )
            if not words:
                raise ValueError(f"text {phrase!r} holds no word")
            if len(words) + 1 > self.context_length:
                raise encoder.too_long(phrase, len(words) + 1)
            rows[row, 0] = 1
            rows[row, 1 : len(words) + 1] = torch.tensor([self.ids[w] for w in words])
        return rows


class EmbeddedTextEncoder(TextEncoder):
    """A small transformer over word tokens: B x context_length ids -> B x embed_dim (the summary token's state).

    Sized for the synthetic scenes' 25-word language: width 128, 2 pre-norm layers of 4 heads, context 12 tokens
    (the longest phrase, "every part inside the red striped rectangle", is 7 words + the summary token).
    Word order matters ("the part inside the red ellipse" is not "the red part inside the ellipse"), which a bag
    of words could not tell apart."""

    name = "embedded text encoder"

    def __init__(
        self,
        vocabulary: Sequence[str] = VOCABULARY,
        embed_dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        context_length: int = 12,
    ) -> None:
        super().__init__()
        self.tokenizer = WordTokenizer(vocabulary, context_length)
        self.embed_dim, self.context_length = embed_dim, context_length
        self.config = {
            "vocabulary": list(self.tokenizer.vocabulary),
            "embed_dim": embed_dim,
            "depth": depth,
            "heads": heads,
            "context_length": context_length,
        }
        self.token_embedding = nn.Embedding(len(self.tokenizer), embed_dim, padding_idx=0)
        self.position_embedding = nn.Parameter(torch.randn(context_length, embed_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            embed_dim, heads, 4 * embed_dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)

    def tokenize(self, phrases: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(phrases, self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens B x context_length (ids, 0 = padding) -> B x embed_dim."""
        x = self.token_embedding(tokens) + self.position_embedding[: tokens.shape[1]]
        x = self.layers(x, src_key_padding_mask=tokens == 0)
        return self.norm(x[:, 0])

    def record(self) -> dict:
        return {"kind": "embedded", "config": dict(self.config), "state": self.state_dict()}
