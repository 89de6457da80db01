"""Tokenizers: the in-house character tokenizer (no downloads) and an adapter for any local HF tokenizer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from offline_rl.errors import UserError

SPECIALS = ("<pad>", "<bos>", "<eos>")
BUILTIN_ALPHABET = "0123456789+-*/=()<>,:;| "
CHAR_FILE = "char_tokenizer.json"


class SeqTokenizer(Protocol):
    """What the backend needs from a tokenizer."""

    pad_id: int
    bos_id: int | None
    eos_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def encode_prompt(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def token_id(self, text: str) -> int | None: ...
    def save(self, directory: str | Path) -> None: ...


class CharTokenizer:
    """One token per character of `alphabet`, after <pad>=0, <bos>=1, <eos>=2. Deterministic, no files needed."""

    def __init__(self, alphabet: str = BUILTIN_ALPHABET) -> None:
        chars = list(dict.fromkeys(alphabet))
        self.alphabet = "".join(chars)
        self.itos = list(SPECIALS) + chars
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self.vocab_size = len(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise UserError(f"character {e.args[0]!r} is not in the tokenizer's alphabet {self.alphabet!r}") from None

    def encode_prompt(self, text: str) -> list[int]:
        return [self.bos_id, *self.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[i] for i in ids if i >= len(SPECIALS))

    def token_id(self, text: str) -> int | None:
        return self.stoi.get(text)

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / CHAR_FILE).write_text(json.dumps({"alphabet": self.alphabet, "specials": SPECIALS}))

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        return cls(json.loads((Path(directory) / CHAR_FILE).read_text())["alphabet"])

    def to_hf(self) -> Any:
        """The same vocabulary as a `transformers.PreTrainedTokenizerFast` (for tools that need an HF tokenizer)."""
        from tokenizers import Tokenizer, decoders
        from tokenizers.models import BPE
        from transformers import PreTrainedTokenizerFast

        vocab = {tok: i for i, tok in enumerate(self.itos)}
        tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token=None))  # no merges: one token per character
        tok.add_special_tokens(list(SPECIALS))
        tok.decoder = decoders.Fuse()  # characters join without spaces
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                       eos_token="<eos>", padding_side="left",
                                       clean_up_tokenization_spaces=False)


class HFTokenizer:
    """Adapter over a Hugging Face tokenizer; pad falls back to eos."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.eos_id = tok.eos_token_id
        if self.eos_id is None:
            raise UserError("the tokenizer has no eos token")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id
        self.bos_id = tok.bos_token_id
        self.vocab_size = len(tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, text: str) -> list[int]:
        return ([self.bos_id] if self.bos_id is not None else []) + self.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def token_id(self, text: str) -> int | None:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    def save(self, directory: str | Path) -> None:
        self.tok.save_pretrained(str(directory))


def load_tokenizer(directory: str | Path) -> CharTokenizer | HFTokenizer:
    """The character tokenizer saved in `directory`, else any HF tokenizer there (AutoTokenizer, local only)."""
    path = Path(directory)
    if (path / CHAR_FILE).is_file():
        return CharTokenizer.load(path)
    if not path.is_dir():
        raise UserError(f"tokenizer directory not found: {path}")
    try:
        from transformers import AutoTokenizer

        return HFTokenizer(AutoTokenizer.from_pretrained(str(path), local_files_only=True))
    except (OSError, ValueError) as e:
        raise UserError(f"no tokenizer in {path}: {e}") from None
