"""PTB word-level language model with Outlier Exposure on WikiText-2, evaluated on the English Web Treebank.

    python recipes/ptb_word_oe.py --preset tiny                 # 2-core CPU, < 10 minutes, real data
    accelerate launch recipes/ptb_word_oe.py --preset paper     # one or many GPUs

Writes results.json, results.md (paper Table 6 layout), ROC / histogram PNGs and both models to --output-dir.
"""

from oe_text.lm.recipe_cli import main

if __name__ == "__main__":
    main(level="word")
