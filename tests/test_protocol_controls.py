"""Protocol controls of the PTB language-model experiment (issue 24, item 12): PTB test against PTB test rewritten
to each EWT protocol's writing of rare words, one record per protocol, score and model."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from oe_text.lm.controls import control_lines, rare_word_pool, word_unk_share
from oe_text.lm.lm_experiment import (TextOEConfig, _markdown_report, controls_markdown, evaluate_scores, headline_protocol,
                                   is_control)
from oe_text.lm.vocab import Vocabulary

# train counts: "the" 6, "cat" 3, "sat" 2, "mat" 1, "on" 4 -> rarest first: mat, sat, cat
TRAIN = "the cat sat on the mat <eos> the cat on the <unk> <eos> the cat sat on the <eos> on".split()


def _vocab_and_ids(text: str) -> tuple[Vocabulary, np.ndarray, np.ndarray]:
    vocab = Vocabulary.build(TRAIN, unk="<unk>", eos="<eos>", level="word")
    return vocab, vocab.encode(TRAIN), vocab.encode(text.split())


def test_spelled_control_spells_every_unk_out_and_changes_nothing_else():
    vocab, train, test = _vocab_and_ids("the <unk> sat <eos> <unk> on the mat <eos>")
    lines = control_lines(test, train, vocab, 0.0, ["zyx", "quux"], seed=3)
    assert [len(line) for line in lines] == [3, 4]
    assert word_unk_share(lines) == 0.0
    assert lines[0][0::2] == ["the", "sat"] and lines[1][1:] == ["on", "the", "mat"]
    assert {lines[0][1], lines[1][0]} <= {"zyx", "quux"}
    assert control_lines(test, train, vocab, 0.0, ["zyx", "quux"], seed=3) == lines  # seeded


def test_cut_control_turns_the_rarest_words_into_unk_up_to_the_target_share():
    vocab, train, test = _vocab_and_ids("the cat sat on the mat <eos> the cat <eos>")  # 8 words, no <unk>
    lines = control_lines(test, train, vocab, 0.25, [], seed=0)  # 2 of 8: mat (1 in train), then sat (2)
    assert lines == [["the", "cat", "<unk>", "on", "the", "<unk>"], ["the", "cat"]]
    assert word_unk_share(lines) == 0.25
    unchanged = control_lines(test, train, vocab, 0.0, [], seed=0)
    assert unchanged == [["the", "cat", "sat", "on", "the", "mat"], ["the", "cat"]]


def test_rare_word_pool_keeps_words_outside_the_vocabulary_with_their_frequency():
    vocab, _, _ = _vocab_and_ids("the")
    pool = rare_word_pool([" The Zebra @-@ like cat , 1999 <unk> Zebra ."], vocab)
    assert pool == ["zebra-like", "zebra"]  # lower-cased, @-@ glued, no number / punctuation / <unk> / PTB word


def _scores(rng: np.random.Generator) -> dict[str, np.ndarray]:
    ptb = rng.normal(0.0, 1.0, 100)
    return {"ptb/test": ptb, "paper/email": rng.normal(2.0, 1.0, 40), "clean/email": rng.normal(0.8, 1.0, 40),
            "control/paper": rng.normal(1.5, 1.0, 20),  # 20 = 100 // 5: each draw is the whole set
            "control/clean": rng.normal(0.05, 1.0, 20)}


def test_control_records_equal_the_auroc_of_ptb_against_its_rewritten_self():
    cfg = TextOEConfig(protocols=("paper", "clean"), scores=("nll",), n_draws=3)
    scores = _scores(np.random.default_rng(0))
    records = evaluate_scores({"nll": scores}, cfg, "baseline", {"paper": "paper's rewrite", "clean": "clean's rewrite"})
    controls = {r["protocol"]: r for r in records if is_control(r)}
    assert set(controls) == {"paper", "clean"}
    for protocol, record in controls.items():
        ptb, out = scores["ptb/test"], scores[f"control/{protocol}"]
        expected = roc_auc_score(np.r_[np.zeros(ptb.size), np.ones(out.size)], np.r_[ptb, out])
        assert record["auroc"] == pytest.approx(expected, abs=1e-12)
        assert (record["n_draws"], record["n_out"], record["control"]) == (1, 20, f"{protocol}'s rewrite")
    # the domains and their mean are as without controls
    plain = evaluate_scores({"nll": {k: v for k, v in scores.items() if not k.startswith("control/")}}, cfg, "baseline")
    assert [r for r in records if not is_control(r)] == plain


def test_report_headline_is_the_protocol_whose_control_is_nearest_50_and_says_what_it_explains():
    cfg = TextOEConfig(protocols=("paper", "clean"), scores=("nll",), n_draws=1)
    scores = _scores(np.random.default_rng(1))
    records = [r for stage in ("baseline", "oe") for r in evaluate_scores({"nll": scores}, cfg, stage, {"paper": "P", "clean": "C"})]
    control = {r["protocol"]: r["auroc"] for r in records if is_control(r) and r["stage"] == "baseline"}
    assert abs(control["clean"] - 0.5) < abs(control["paper"] - 0.5)
    assert headline_protocol(records, cfg.protocols, "nll") == "clean"
    section = "\n".join(controls_markdown(records, "word", ("clean", "paper"), ("nll",)))
    mean = next(r["auroc"] for r in records if (r["protocol"], r["ood_set"], r["stage"]) == ("paper", "mean", "baseline"))
    explained = (control["paper"] - 0.5) / (mean - 0.5)
    assert f"| paper | nll | P | {control['paper'] * 100:.1f} → " in section and f"{explained * 100:.0f}% → " in section
    quality = {m: {"perplexity": 1.0, "bits_per_token": 1.0, "train_tokens_per_second": 1.0, "steps": 1, "planned_steps": 1}
               for m in ("baseline", "oe")}
    md = _markdown_report(cfg, records, {"test_quality": quality, "seq_len": 70, "commit": "c", "hardware": "h", "date": "d",
                                         "seconds": {}})
    assert "Headline protocol: `clean`" in md
    assert md.index("## EWT protocol `clean`") < md.index("## EWT protocol `paper`")
    assert "| control explains |" in md
