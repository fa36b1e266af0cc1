"""Text classifiers with Outlier Exposure: CLINC150 intents, SST-2 sentiment, TREC-50 questions (issue #12).

    python recipes/textcls_oe.py --dataset clinc150 --model minilm --preset tiny    # 2-core CPU, <= 5 minutes
    python recipes/textcls_oe.py --dataset trec --model gru --preset full --threads 2
    accelerate launch recipes/textcls_oe.py --dataset sst2 --model minilm --preset full

Needs the MiniLM checkpoint in the Hugging Face cache (`oe fetch-checkpoint all-minilm-l6-v2`; the GRU uses its
tokenizer). Writes results.json / results.md, ROC / histogram PNGs, both models and detector/ to --output-dir.
"""

from oe_text.textcls.textcls_recipe import main

if __name__ == "__main__":
    main()
