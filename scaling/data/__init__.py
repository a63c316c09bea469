"""Data: corpora -> held-out split -> token cache -> batches, and the eval set.

    dataset.py     corpus readers, the document split, the token cache, batches (TokenData)
    neardup.py     near-duplicate documents between the train and held-out sides
    shards.py      pre-tokenized token shards (llm.c / nanoGPT .bin) read as a corpus
    tokenizer.py   raw bytes, or a byte-level BPE trained on the corpus
    evalset.py     the evaluation set: a uniform sample of the held-out windows
    tasks.py       synthetic tasks mixed into training (emergence studies)
    masking.py     BERT's masked-LM corruption of token windows
"""
