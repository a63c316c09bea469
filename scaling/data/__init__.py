"""Data: corpora -> held-out split -> token cache -> batches, and the eval set.

    dataset.py     the entry: load_corpus(data_cfg, seq_len) -> TokenData, its batches and eval set
    corpora.py     reading corpora into documents (stdlib, folder, .jsonl, text, hf:), DataError
    heldout.py     which document groups are held out for validation (hash of the name)
    dedup.py       near-duplicates across the train/validation split, dropped (cached per corpus)
    neardup.py     near-duplicate measures: shingles, exact Jaccard and containment
    cache.py       the token cache: memmapped train/validation streams, key, fingerprint
    order.py       the hashes behind every order: splitmix64, salted name hash, window permutation
    shards.py      pre-tokenized token shards (llm.c / nanoGPT .bin) read as a corpus
    tokenizer.py   raw bytes, or a byte-level BPE trained on the corpus
    evalset.py     the evaluation set: a uniform sample of the held-out windows
    tasks.py       synthetic tasks mixed into training (emergence studies)
    masking.py     BERT's masked-LM corruption of token windows
"""
