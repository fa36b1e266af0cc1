"""Protocol controls: the in-distribution text written the way an EWT protocol writes its rare words.

An EWT protocol (docs/text.md) changes how rare words look: ``spelled`` spells every word out while PTB test keeps
its ``<unk>`` (5.4% of its characters, cheap to predict); ``paper`` and ``clean`` cut EWT's words to the PTB
vocabulary, leaving 28-35% / 8-13% ``<unk>`` against PTB test's 5.8%. A detector can separate PTB from EWT by that
writing alone. The control of a protocol is PTB test against PTB test rewritten to the protocol's share of
``<unk>`` among words (pooled over the EWT domains), the sentences otherwise unchanged:

* share below PTB's (``spelled``: 0): ``<unk>`` occurrences, drawn with a seeded generator, are spelled out as
  rare words -- word tokens of WikiText-2 *validation* outside the PTB vocabulary, read with PTB conventions
  (:func:`oe_text.lm.normalize.normalize_ptb_line`), drawn by their frequency there;
* share above PTB's (``paper``, ``clean``): the rarest PTB vocabulary words (by PTB train count, ties by id) become
  ``<unk>`` until the share is reached, i.e. PTB test under a smaller vocabulary.

The control's AUROC (PTB test in, rewritten PTB test out, same model and score) is what the writing of rare
words alone gives; 50 means the protocol's writing carries no signal. ``oe_text.lm.lm_experiment`` reports it per
protocol as records with ``domain == "control"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .normalize import NUM, normalize_ptb_line, unsplit_wikitext
from .vocab import Vocabulary

__all__ = ["CONTROL_SET", "word_unk_share", "rare_word_pool", "control_lines", "control_description"]

#: ``domain`` of a control record (and the evaluation set name ``control/<protocol>``).
CONTROL_SET = "control"


def word_unk_share(sentences: Iterable[Sequence[str]], unk: str = "<unk>") -> float:
    """Share of ``unk`` among the word tokens of ``sentences`` (pooled; no ``<eos>``); 0.0 for no tokens."""
    n = hits = 0
    for words in sentences:
        n += len(words)
        hits += sum(1 for w in words if w == unk)
    return hits / n if n else 0.0


def rare_word_pool(lines: Iterable[str], word_vocab: Vocabulary) -> list[str]:
    """Word tokens of WikiText lines (``@-@`` glued back, PTB conventions: lower-case, numbers ``N``, punctuation
    dropped) that are outside ``word_vocab``, in text order with repeats (a uniform draw is a draw by frequency).
    WikiText's own ``<unk>``, numbers (``N``) and tokens with no letter are left out."""
    pool = []
    for line in lines:
        for word in normalize_ptb_line(unsplit_wikitext(line)):
            if word not in word_vocab and word not in (word_vocab.unk, NUM) and any(c.isalpha() for c in word):
                pool.append(word)
    return pool


def control_lines(test_ids: np.ndarray, train_ids: np.ndarray, word_vocab: Vocabulary, target_unk_share: float,
                  rare_words: Sequence[str], seed: int = 0) -> list[list[str]]:
    """PTB test (word ids, ``<eos>`` after each line) as word lines rewritten to ``target_unk_share`` of ``<unk>``
    among words (module docstring); the share reached is within one word type of the target (above it) when
    words are cut, exact when ``<unk>`` are spelled out."""
    if not 0.0 <= target_unk_share <= 1.0:
        raise ValueError(f"target_unk_share must be in [0, 1], got {target_unk_share}")
    ids = np.array(test_ids, dtype=np.int64)
    unk, eos = word_vocab.unk_id, word_vocab.eos_id
    is_word = ids != eos
    n_words, n_unk = int(is_word.sum()), int((ids == unk).sum())
    wanted = int(round(target_unk_share * n_words))
    spelled: dict[int, str] = {}
    if wanted < n_unk:
        if not rare_words:
            raise ValueError("spelling <unk> out needs rare words; the pool is empty")
        rng = np.random.default_rng(seed)
        where = np.flatnonzero(ids == unk)
        chosen = np.sort(rng.choice(where, size=n_unk - wanted, replace=False))
        words = rng.integers(0, len(rare_words), size=chosen.size)
        spelled = {int(p): rare_words[int(w)] for p, w in zip(chosen, words)}
    elif wanted > n_unk:
        counts = np.bincount(np.asarray(train_ids, dtype=np.int64), minlength=len(word_vocab))
        test_counts = np.bincount(ids, minlength=len(word_vocab))
        order = [i for i in np.argsort(counts, kind="stable") if i not in (unk, eos)]
        cut, reached = [], n_unk
        for i in order:
            if reached >= wanted:
                break
            if test_counts[i]:
                cut.append(i)
                reached += int(test_counts[i])
        ids[np.isin(ids, cut)] = unk
    lines, line = [], []
    for pos, i in enumerate(ids.tolist()):
        if i == eos:
            lines.append(line)
            line = []
        else:
            line.append(spelled.get(pos) or word_vocab.itos[i])
    if line:
        lines.append(line)
    return lines


def control_description(protocol: str, ptb_share: float, target_share: float) -> str:
    """One sentence saying what the control of ``protocol`` compared (for records and the report)."""
    if target_share < ptb_share:
        how = "each <unk> spelled out as a rare word (WikiText-2 valid, outside the PTB vocabulary)" if target_share == 0 else \
            f"<unk> spelled out as rare words down to {target_share:.1%} of words"
    elif target_share > ptb_share:
        how = f"the rarest PTB words made <unk> up to {target_share:.1%} of words (EWT {protocol}'s share)"
    else:
        how = "unchanged (the protocol writes rare words as PTB does)"
    return f"PTB test ({ptb_share:.1%} <unk>) vs PTB test with {how}"
