"""PTB word / char language models with OE: data, vocabulary, normalisers, models, the pipeline."""
