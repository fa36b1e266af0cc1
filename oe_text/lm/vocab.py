"""A closed token <-> id vocabulary for the PTB language models (word and character level).

Ids are assigned in first-appearance order of the corpus the vocabulary is built from (what the standard
PyTorch LM loaders -- pytorch/examples, AWD-LSTM, the OE paper's code -- do), so the same corpus always gives
the same ids. ``save``/``load`` round-trip through JSON.

* Word level (PTB): 10,000 tokens including ``<eos>`` and ``<unk>``; ``unk="<unk>"``.
* Char level (PTB-char): 50 symbols (49 characters incl. the word separator ``_``, plus ``<eos>``). There is no
  single unknown-character symbol (PTB-char spells the word ``<unk>`` as the five characters ``< u n k >``), so
  ``unk is None`` and unknown characters must be dropped by the normaliser before encoding.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["Vocabulary", "EOS", "UNK"]

EOS = "<eos>"
UNK = "<unk>"
_FORMAT = "oe_text.Vocabulary"
_VERSION = 1


class Vocabulary:
    """Token <-> id map with an end-of-sequence token and an optional unknown token.

    Args:
        tokens: the tokens in id order (id = position). Must be unique and contain ``eos`` (and ``unk`` unless
            ``unk`` is None).
        unk: the out-of-vocabulary token, or None when the vocabulary has none (character level).
        eos: the end-of-sequence token appended after every line / sentence.
        level: ``"word"`` or ``"char"`` (metadata, saved with the vocabulary).
    """

    def __init__(self, tokens: Iterable[str], *, unk: str | None = UNK, eos: str = EOS, level: str = "word"):
        self.itos: list[str] = list(tokens)
        self.stoi: dict[str, int] = {}
        for i, tok in enumerate(self.itos):
            if not isinstance(tok, str):
                raise TypeError(f"vocabulary tokens must be str, got {type(tok).__name__} at id {i}")
            if tok in self.stoi:
                raise ValueError(f"duplicate token {tok!r} at ids {self.stoi[tok]} and {i}")
            self.stoi[tok] = i
        if eos not in self.stoi:
            raise ValueError(f"eos token {eos!r} is not in the vocabulary")
        if unk is not None and unk not in self.stoi:
            raise ValueError(f"unk token {unk!r} is not in the vocabulary (pass unk=None for a vocabulary without one)")
        if level not in ("word", "char"):
            raise ValueError(f"level must be 'word' or 'char', got {level!r}")
        self.unk = unk
        self.eos = eos
        self.level = level

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        token_stream: Iterable[str],
        *,
        unk: str | None = UNK,
        eos: str = EOS,
        level: str = "word",
    ) -> "Vocabulary":
        """Build from a token stream, ids in first-appearance order. ``eos``/``unk`` are appended if never seen."""
        seen = dict.fromkeys(token_stream)
        for special in (eos, unk):
            if special is not None:
                seen.setdefault(special)
        return cls(seen.keys(), unk=unk, eos=eos, level=level)

    # ------------------------------------------------------------------ basic protocol
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __iter__(self):
        return iter(self.itos)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return (self.itos, self.unk, self.eos, self.level) == (other.itos, other.unk, other.eos, other.level)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"Vocabulary(level={self.level!r}, size={len(self)}, unk={self.unk!r}, eos={self.eos!r})"

    @property
    def eos_id(self) -> int:
        return self.stoi[self.eos]

    @property
    def unk_id(self) -> int | None:
        return None if self.unk is None else self.stoi[self.unk]

    @property
    def fingerprint(self) -> str:
        """sha256 of the JSON form: equal fingerprints mean identical vocabularies (ids included)."""
        fp = self.__dict__.get("_fingerprint")
        if fp is None:
            fp = hashlib.sha256(json.dumps(self.to_dict(), ensure_ascii=True).encode()).hexdigest()
            self.__dict__["_fingerprint"] = fp
        return fp

    def token_to_id(self, token: str) -> int:
        """Id of ``token``; OOV tokens give ``unk_id`` (KeyError when the vocabulary has no unk)."""
        idx = self.stoi.get(token)
        if idx is not None:
            return idx
        if self.unk is None:
            raise KeyError(f"token {token!r} is not in the {self.level} vocabulary and it has no unk token")
        return self.stoi[self.unk]

    def id_to_token(self, idx: int) -> str:
        return self.itos[idx]

    # ------------------------------------------------------------------ encode / decode
    def encode(self, tokens: Iterable[str], *, oov: str = "unk") -> np.ndarray:
        """Token ids as an int64 array.

        Args:
            tokens: the tokens.
            oov: ``"unk"`` maps out-of-vocabulary tokens to ``unk_id`` (KeyError if there is no unk);
                ``"error"`` raises KeyError on the first OOV token.
        """
        if oov not in ("unk", "error"):
            raise ValueError(f"oov must be 'unk' or 'error', got {oov!r}")
        stoi = self.stoi
        if not isinstance(tokens, (list, tuple)):
            tokens = list(tokens)
        if oov == "unk" and self.unk is not None:
            return np.fromiter(map(stoi.get, tokens, itertools.repeat(stoi[self.unk])), dtype=np.int64, count=len(tokens))
        try:
            return np.fromiter(map(stoi.__getitem__, tokens), dtype=np.int64, count=len(tokens))
        except KeyError as err:
            raise KeyError(f"token {err.args[0]!r} is not in the {self.level} vocabulary (size {len(self)})") from None

    def decode(self, ids: Iterable[int] | np.ndarray) -> list[str]:
        """Tokens of ``ids``. Ids that are negative (e.g. the label padding -100) are skipped."""
        itos = self.itos
        out = []
        for i in np.asarray(ids, dtype=np.int64).ravel().tolist():
            if i < 0:
                continue
            if i >= len(itos):
                raise IndexError(f"id {i} is outside the vocabulary (size {len(itos)})")
            out.append(itos[i])
        return out

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "version": _VERSION, "level": self.level, "unk": self.unk, "eos": self.eos, "tokens": list(self.itos)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Vocabulary":
        if d.get("format") != _FORMAT:
            raise ValueError(f"not a saved Vocabulary (format={d.get('format')!r})")
        if int(d.get("version", 0)) > _VERSION:
            raise ValueError(f"saved Vocabulary version {d.get('version')} is newer than this code ({_VERSION})")
        return cls(d["tokens"], unk=d["unk"], eos=d["eos"], level=d["level"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON (UTF-8); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    # ------------------------------------------------------------------ character helpers
    def char_lookup_table(self) -> np.ndarray:
        """A 128-entry table (ASCII code -> id, -1 if absent, ``"\\n"`` -> eos) for fast char encoding."""
        table = self.__dict__.get("_char_lut")
        if table is None:
            table = np.full(128, -1, dtype=np.int64)
            for tok, i in self.stoi.items():
                if len(tok) == 1 and ord(tok) < 128:
                    table[ord(tok)] = i
            if table[ord("\n")] >= 0:
                raise ValueError("the vocabulary contains '\\n' as a symbol; it is reserved for end-of-line")
            table[ord("\n")] = self.eos_id
            table.flags.writeable = False
            self.__dict__["_char_lut"] = table
        return table

    def symbols(self) -> Sequence[str]:
        """All tokens except ``eos`` (and ``unk``), in id order."""
        return [t for t in self.itos if t != self.eos and t != self.unk]
