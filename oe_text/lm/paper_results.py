"""The OE paper's Table 6 (PTB language models, baseline -> OE), for display NEXT TO our measured numbers.

These are the paper's numbers (percentages), not ours: results tables label them "paper". The paper used the
LDC English Web Treebank dev files and its released code's text processing; at char level that code collapsed
almost every EWT word into ``< u n k >`` (see :mod:`oe_text.lm.normalize`), so the char rows are not comparable to
either of our protocols. Keys: level -> domain -> metric -> (baseline, OE).
"""

from __future__ import annotations

TABLE6: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "char": {
        "answers": {"fpr90": (99.0, 93.0), "auroc": (79.8, 87.3), "aupr": (81.7, 89.0)},
        "email": {"fpr90": (98.5, 76.9), "auroc": (81.7, 89.2), "aupr": (83.8, 91.2)},
        "newsgroup": {"fpr90": (99.6, 98.0), "auroc": (77.9, 89.3), "aupr": (77.5, 87.7)},
        "reviews": {"fpr90": (98.6, 72.2), "auroc": (81.0, 89.3), "aupr": (82.4, 91.1)},
        "weblog": {"fpr90": (100.0, 100.0), "auroc": (68.3, 78.7), "aupr": (70.0, 81.8)},
        "mean": {"fpr90": (99.1, 88.0), "auroc": (77.7, 86.8), "aupr": (79.1, 88.2)},
    },
    "word": {
        "answers": {"fpr90": (40.6, 3.48), "auroc": (82.6, 98.1), "aupr": (55.0, 96.3)},
        "email": {"fpr90": (73.4, 0.17), "auroc": (73.5, 99.2), "aupr": (52.6, 98.8)},
        "newsgroup": {"fpr90": (58.1, 0.17), "auroc": (75.6, 99.5), "aupr": (41.7, 98.6)},
        "reviews": {"fpr90": (29.6, 0.85), "auroc": (88.1, 99.0), "aupr": (67.0, 98.0)},
        "weblog": {"fpr90": (47.8, 0.08), "auroc": (80.8, 99.9), "aupr": (51.4, 99.8)},
        "mean": {"fpr90": (49.9, 0.95), "auroc": (80.1, 99.1), "aupr": (53.6, 98.3)},
    },
}
