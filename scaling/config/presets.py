"""Named model shapes forming a size ladder, one per model family (the same names).

Names say the non-embedding parameter count N (Kaplan et al.'s definition,
12 * n_layer * d_model^2 for d_ff = 4 d, biases and norms aside), so a sweep over
presets reads as a sweep over N. The names are nominal rungs of a roughly 2x ladder;
the exact N (biases and layer norms included, from scaling.accounting.counts.param_counts)
is in the right-hand column and lies within 15% of the name (checked in the tests). The head size is 32 up to d 256 and 64 above;
the aspect ratio d_model / n_layer stays between 32 and 64, the range where
Kaplan et al. found loss insensitive to shape. The exact N of each preset is
`scaling.accounting.counts.param_counts` and is checked in the tests.
"""

PRESETS: dict[str, dict] = {
    # name:        n_layer, d_model, n_head             12 L d^2   exact N
    "n25k":   dict(n_layer=1, d_model=48, n_head=2),    # 27.6k     28,368
    "n100k":  dict(n_layer=2, d_model=64, n_head=2),    # 98.3k     100,096
    "n200k":  dict(n_layer=2, d_model=96, n_head=3),    # 221k      223,872
    "n400k":  dict(n_layer=3, d_model=112, n_head=4),   # 452k      456,176
    "n800k":  dict(n_layer=4, d_model=128, n_head=4),   # 786k      793,344
    "n1.6m":  dict(n_layer=4, d_model=192, n_head=6),   # 1.77M     1,779,840
    "n3m":    dict(n_layer=6, d_model=192, n_head=6),   # 2.65M     2,669,568
    "n6m":    dict(n_layer=6, d_model=288, n_head=9),   # 5.97M     5,995,008
    "n14m":   dict(n_layer=8, d_model=384, n_head=6),   # 14.2M     14,196,480
    "n25m":   dict(n_layer=10, d_model=448, n_head=7),  # 24.1M     24,143,616
    "n50m":   dict(n_layer=12, d_model=576, n_head=9),  # 47.8M     47,866,752
    "n85m":   dict(n_layer=12, d_model=768, n_head=12), # 84.9M     85,056,000 (GPT-2 small)
}

# The LSTM's ladder under the same names (same nominal non-embedding N; exact N =
# n_layer (8 d^2 + 4 d) + 2 d, scaling.models.lstm_accounting, within 4 % of the name).
# Depth grows slowly with size (1 layer at 25k, 2 up to 800k, 3 to 6M, 4 above), as in
# the stacked LSTMs of Kaplan et al. (2020, Fig. 7); d_model a multiple of 8.
LSTM_PRESETS: dict[str, dict] = {
    # name:        n_layer, d_model         exact N
    "n25k":   dict(n_layer=1, d_model=56),    # 25,424
    "n100k":  dict(n_layer=2, d_model=80),    # 103,200
    "n200k":  dict(n_layer=2, d_model=112),   # 201,824
    "n400k":  dict(n_layer=2, d_model=160),   # 411,200
    "n800k":  dict(n_layer=2, d_model=224),   # 805,056
    "n1.6m":  dict(n_layer=3, d_model=256),   # 1,576,448
    "n3m":    dict(n_layer=3, d_model=352),   # 2,978,624
    "n6m":    dict(n_layer=3, d_model=496),   # 5,911,328
    "n14m":   dict(n_layer=4, d_model=664),   # 14,120,624
    "n25m":   dict(n_layer=4, d_model=880),   # 24,796,640
    "n50m":   dict(n_layer=4, d_model=1248),  # 49,862,592
    "n85m":   dict(n_layer=4, d_model=1632),  # 85,258,944
}

# The encoder has the transformer's blocks, so it uses the transformer's ladder.
FAMILY_PRESETS: dict[str, dict[str, dict]] = {
    "transformer": PRESETS, "encoder": PRESETS, "lstm": LSTM_PRESETS}


def presets_of(arch: str) -> dict[str, dict]:
    """The preset table of the family `arch` (the transformer's for an unknown name, whose
    own check reports it)."""
    return FAMILY_PRESETS.get(arch, PRESETS)
