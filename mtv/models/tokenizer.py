"""An offline tokenizer: byte-level BPE trained with `tokenizers`, or any local tokenizer.json.

Texts become fixed-length id rows: the tokens, an end-of-text token, then padding up to the
context length (as SigLIP, whose text tower pools the last position).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from torch import Tensor

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


# A caption is cut to this many characters per token of the context before it is encoded (or
# used to train the tokenizer): far more than the context can hold (BPE tokens of captions are
# a few characters), and a 10 MB caption no longer costs gigabytes of encodings (it took
# training to 3.0 GB) for tokens that are cut off anyway.
CHARS_PER_CONTEXT_TOKEN = 32


def cut(text: str, context_length: int) -> str:
    """`text` without what lies past any token the context could hold."""
    return text[: CHARS_PER_CONTEXT_TOKEN * context_length]


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length
        missing = [t for t in (PAD, EOS) if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special token(s) {missing}")
        self.pad_id = tokenizer.token_to_id(PAD)
        self.eos_id = tokenizer.token_to_id(EOS)
        _undo_export(tokenizer, self.eos_id)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        context_length: int,
        lowercase: bool = True,
    ) -> TextTokenizer:
        """Train a byte-level BPE on `texts` (seconds for a corpus of captions)."""
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        tokenizer.normalizer = normalizers.Sequence(steps)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[PAD, EOS, UNK],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator((cut(t, context_length) for t in texts), trainer=trainer)
        return cls(tokenizer, context_length)

    @classmethod
    def from_file(cls, path: str | Path, context_length: int) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls(Tokenizer.from_file(str(path)), context_length)

    def save(self, path: str | Path) -> None:
        """Written whole or not at all: a run reading it meanwhile never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        self.tokenizer.save(str(partial))
        partial.replace(path)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: Sequence[str]) -> Tensor:
        """(len(texts), context_length) int64 ids: tokens, EOS, padding. Long texts are cut,
        keeping the EOS as the last token."""
        rows = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        cut_texts = [cut(text, self.context_length) for text in texts]
        for row, encoding in enumerate(self.tokenizer.encode_batch(cut_texts)):
            ids = [*encoding.ids[: self.context_length - 1], self.eos_id]
            rows[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return rows

    def decode(self, ids: Tensor) -> str:
        keep = [int(i) for i in ids if int(i) not in (self.pad_id, self.eos_id)]
        return self.tokenizer.decode(keep).strip()


def _undo_export(tokenizer: Tokenizer, eos_id: int) -> None:
    """A tokenizer.json written by `mtv export` (e.g. the one beside a `model.init_from`
    checkpoint) pads, truncates and appends EOS for `transformers`; mtv does those itself, so
    they are switched off here and the rows come out as the exporting run made them."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    appended = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, eos_id)])
    processor = tokenizer.post_processor
    if processor is not None and processor.__getstate__() == appended.__getstate__():
        tokenizer.post_processor = None


def load_or_train_tokenizer(
    path: str | Path,
    captions: Callable[[], Iterable[str]],
    vocab_size: int,
    context_length: int,
    lowercase: bool = True,
) -> TextTokenizer:
    """The tokenizer at `path`; when there is none yet, a BPE trained on `captions()` and saved
    there (so every later run, and evaluation, tokenizes the same way)."""
    path = Path(path)
    if path.is_file():
        tokenizer = TextTokenizer.from_file(path, context_length)
    else:
        tokenizer = TextTokenizer.train(captions(), vocab_size, context_length, lowercase)
        tokenizer.save(path)
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"tokenizer {path} has {tokenizer.vocab_size} tokens, more than the text tower's "
            f"vocab_size {vocab_size}"
        )
    return tokenizer
