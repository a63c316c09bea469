"""The sections of a run config: [model], [data], [optim], [train], each with its checks.

Typed, frozen dataclasses; every field's comment says what it means, and each section's
`validate` raises ConfigError naming the key and what is allowed. `SECTIONS` maps the
table names to the classes. The whole run (`Config`, and the checks across sections) is
`scaling.config.run_config`; reading values into them is `scaling.config.parse`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from scaling.config.parse import NAME_LIST, ConfigError
@dataclass(frozen=True)
class ModelConfig:
    """The model: its family (`arch`), shape and numerics."""

    # the family, a module of scaling.models: "transformer" (decoder, next-token), "lstm"
    # (recurrent, next-token), "encoder" (bidirectional, masked-LM: data.objective = "mlm")
    arch: Literal["transformer", "lstm", "encoder"] = "transformer"
    preset: str = ""  # a name from scaling.config.presets.PRESETS; explicit keys override it
    n_layer: int = 2
    d_model: int = 128
    n_head: int = 4
    d_ff: int = 0  # 0 means 4 * d_model
    vocab_size: int = 256  # must match the tokenizer; the loader checks it
    seq_len: int = 128
    pos_encoding: Literal["learned", "sinusoidal", "rotary"] = "learned"
    tie_embeddings: bool = True
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    scan_layers: bool = True  # nn.scan over the block stack: compile time flat in depth
    remat: bool = False  # rematerialise each block in the backward pass
    init_std: float = 0.02
    # µP (Yang et al. 2022, Tensor Programs V): "sp" is the standard parametrisation
    # above; "mup" rescales inits, the output logits, the attention scale and the per-layer
    # learning rates with width (see scaling/models/transformer.py and scaling/train/param_groups.py `mup_lr_multipliers`)
    # so that a learning rate tuned at one width transfers. At d_model = mup_base_width,
    # µP equals SP except the attention scale (mup_attn_mult / head_dim).
    parametrization: Literal["sp", "mup"] = "sp"
    mup_base_width: int = 0  # d_model of the base model where µP equals SP; required for mup
    # (the mup_* keys are ignored under sp, so a sweep axis can switch model.parametrization)
    mup_zero_readout: bool = False  # mup: output head initialised to zero (untied head only)
    mup_output_mult: float = 1.0  # mup: logits = mup_output_mult * base/width * (h . W_out)
    mup_attn_mult: float = 1.0  # mup: attention scores q.k * mup_attn_mult / head_dim

    @property
    def ff(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def validate(self) -> None:
        _positive(self, "n_layer", "d_model", "n_head", "vocab_size", "seq_len")
        if self.arch == "lstm":
            self._validate_lstm()
            return
        if self.d_ff < 0:
            raise ConfigError(f"model.d_ff = {self.d_ff}: must be > 0, or 0 for 4 * d_model")
        if self.d_model % self.n_head:
            divisors = [h for h in range(1, self.d_model + 1) if self.d_model % h == 0]
            raise ConfigError(
                f"model.n_head = {self.n_head} does not divide model.d_model = {self.d_model}; "
                f"allowed n_head for this d_model: {divisors}"
            )
        if self.pos_encoding == "rotary" and self.head_dim % 2:
            raise ConfigError(
                f"model.pos_encoding = 'rotary' needs an even head size, got "
                f"d_model / n_head = {self.head_dim}"
            )
        if not self.init_std > 0:
            raise ConfigError(f"model.init_std = {self.init_std}: must be > 0")
        self._validate_mup()

    # Keys of the attention families that an LSTM has no use for: refused when set away
    # from their defaults (at the default they are inert, so a transformer config or
    # preset switches family with one key).
    LSTM_INERT = ("n_head", "d_ff", "pos_encoding", "parametrization")

    def _validate_lstm(self) -> None:
        defaults = ModelConfig()
        bad = [k for k in self.LSTM_INERT if getattr(self, k) != getattr(defaults, k)]
        if bad:
            what = ", ".join(f"model.{k} = {getattr(self, k)!r}" for k in bad)
            allowed = ", ".join(f"model.{k} = {getattr(defaults, k)!r}" for k in bad)
            raise ConfigError(
                f"{what}: does not apply to model.arch = 'lstm' (no attention, no "
                f"feed-forward block, no positional encoding, no µP rules); leave it at its "
                f"default ({allowed}) or use model.arch = 'transformer'")
        if not self.init_std > 0:
            raise ConfigError(f"model.init_std = {self.init_std}: must be > 0")

    @property
    def width_mult(self) -> float:
        """µP's width multiplier d_model / mup_base_width (1.0 under SP)."""
        if self.parametrization != "mup":
            return 1.0
        return self.d_model / self.mup_base_width

    def _validate_mup(self) -> None:
        if self.parametrization not in ("sp", "mup"):
            raise ConfigError(
                f"model.parametrization = {self.parametrization!r}: allowed: 'sp', 'mup'")
        for key in ("mup_output_mult", "mup_attn_mult"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"model.{key} = {getattr(self, key)}: must be > 0")
        if self.mup_base_width < 0:
            raise ConfigError(f"model.mup_base_width = {self.mup_base_width}: must be >= 0")
        if self.parametrization == "sp":
            return  # the mup_* keys have no effect under SP, so one key switches a config
        if self.mup_base_width == 0:
            raise ConfigError(
                f"model.mup_base_width = {self.mup_base_width}: model.parametrization = 'mup' "
                "needs the d_model of the base model (> 0) where µP equals SP")
        if self.mup_zero_readout and self.tie_embeddings:
            raise ConfigError(
                "model.mup_zero_readout = true needs an untied output head: a zero readout "
                "tied to the input embedding would zero the embedding too; set "
                "model.tie_embeddings = false")


@dataclass(frozen=True)
class DataConfig:
    """Corpus, tokenizer and validation split."""

    # "stdlib" (the running Python's standard-library sources), a path to a text file,
    # a folder of text files or a .jsonl file, or "hf:<dataset name>[:<config>]"
    # ("hf:json:/path/file.jsonl" loads a local file through the `datasets` package),
    # or "tokens:<path>": pre-tokenized llm.c/nanoGPT .bin shards (a file, a folder of
    # .bin files or a glob; scaling.data.shards), which need tokens_vocab_size.
    corpus: str = "stdlib"
    # "next_token" (causal LM: transformer, lstm) | "mlm" (BERT's masked LM: 15 % of each
    # window's positions selected, 80/10/10 mask/random/unchanged; model.arch = "encoder";
    # scaling.data.masking)
    objective: Literal["next_token", "mlm"] = "next_token"
    tokenizer: Literal["byte", "bpe"] = "byte"
    bpe_vocab_size: int = 512  # only for tokenizer = "bpe"
    text_field: str = "text"  # for .jsonl and Hugging Face datasets
    hf_split: str = "train"
    val_fraction: float = 0.03  # fraction of documents held out, chosen by a hash of their name
    max_unique_tokens: int = 0  # > 0: train on this many next-token targets (rounded down
    #                             to a multiple of seq_len), repeating epochs
    max_corpus_bytes: int = 0  # > 0: read at most this many bytes of the corpus
    # which validation windows the eval set holds: a salt of their hashed order
    # (scaling.data.evalset); 0, 1, 2, ... draw independent uniform samples of the windows
    eval_seed: int = 0
    cache_dir: str = ""  # "" means $SCALINGLAB_CACHE or ~/.cache/scalinglab
    tokens_vocab_size: int = 0  # "tokens:" corpora: the vocabulary the shards were made with
    #                             (GPT-2: 50257); every token must be below it
    tokens_eot_id: int = -1  # "tokens:" corpora: the id that starts each document (llm.c
    #                          writes <|endoftext|> before every document); -1: tokens_vocab_size - 1
    # Synthetic tasks mixed into training (scaling/data/tasks.py): task name -> fraction of the
    # training sequences, e.g. { addition = 0.1 }; {}: none. Each is evaluated per eval
    # (scaling/train/taskeval.py) as task/<sub-task>/<metric>.
    tasks: dict[str, float] = field(default_factory=dict)

    @property
    def is_token_shards(self) -> bool:
        return self.corpus.startswith("tokens:")

    def validate(self) -> None:
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction = {self.val_fraction}: must be in (0, 0.5)")
        if self.tokenizer == "bpe" and not 257 <= self.bpe_vocab_size <= 65535:
            raise ConfigError(
                f"data.bpe_vocab_size = {self.bpe_vocab_size}: must be in [257, 65535]"
            )
        _nonnegative(self, "max_unique_tokens", "max_corpus_bytes", "tokens_vocab_size")
        if not 0 <= self.eval_seed < 2 ** 63:
            raise ConfigError(f"data.eval_seed = {self.eval_seed}: must be an integer in "
                              "[0, 2**63)")
        check_tasks(self.tasks)
        if self.tasks and self.is_token_shards:
            raise ConfigError(f"data.tasks = {self.tasks}: needs a text tokenizer to write task "
                              f"instances; data.corpus = {self.corpus!r} is pre-tokenized shards")
        if self.is_token_shards:
            self._validate_token_shards()
        elif self.corpus != "stdlib" and not self.corpus.startswith("hf:"):
            if not Path(self.corpus).expanduser().exists():
                raise ConfigError(
                    f"data.corpus = {self.corpus!r}: no such file or folder; allowed: 'stdlib', "
                    "a path to a text file, a folder of text files or a .jsonl file, "
                    "or 'hf:<dataset>'"
                )

    def _validate_token_shards(self) -> None:
        if not 2 <= self.tokens_vocab_size <= 1 << 32:
            raise ConfigError(
                f"data.tokens_vocab_size = {self.tokens_vocab_size}: data.corpus = "
                f"{self.corpus!r} needs the vocabulary size its shards were made with "
                "(e.g. 50257 for GPT-2), in [2, 2**32]"
            )
        if not -1 <= self.tokens_eot_id < self.tokens_vocab_size:
            raise ConfigError(
                f"data.tokens_eot_id = {self.tokens_eot_id}: must be in [0, "
                f"data.tokens_vocab_size = {self.tokens_vocab_size}), or -1 for "
                "tokens_vocab_size - 1"
            )
        if self.max_corpus_bytes:
            raise ConfigError(
                f"data.max_corpus_bytes = {self.max_corpus_bytes}: caps text, not token "
                f"shards ({self.corpus!r}): set it to 0; data.max_unique_tokens caps tokens"
            )


TRACKERS = ("jsonl", "tensorboard", "wandb")
TASK_NAMES = ("addition", "copy")  # scaling.data.tasks.TASKS, in its order (asserted there)


def check_tasks(tasks: dict, batch_size: int | None = None) -> None:
    """ConfigError naming data.tasks for unknown names or bad fractions (see scaling.data.tasks.TaskMix)."""
    allowed = ", ".join(repr(n) for n in TASK_NAMES)
    for name, f in tasks.items():
        if name not in TASK_NAMES:
            raise ConfigError(f"data.tasks: unknown task {name!r}; allowed: {allowed}")
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 \
                or not math.isfinite(f):
            raise ConfigError(f"data.tasks.{name} = {f!r}: the fraction of training "
                              "sequences must be a number in (0, 1)")
    total = sum(tasks.values())
    if tasks and not total < 1:
        raise ConfigError(f"data.tasks: fractions sum to {total:g}; they must sum to < 1 "
                          "(the rest of each batch is the corpus)")
    if batch_size is not None and tasks:
        worst = sum(math.ceil(Fraction(str(f)) * batch_size) for f in tasks.values())
        if worst > batch_size:
            raise ConfigError(
                f"data.tasks = {tasks}: with train.batch_size = {batch_size} one step may need "
                f"{worst} task rows (sum of ceil(batch_size x fraction)); use fewer tasks, "
                "smaller fractions or a larger batch")


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lars", "lamb")
SCHEDULES = ("constant", "cosine", "linear", "wsd")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule, weight decay and clipping."""

    name: Literal["sgd", "momentum", "nesterov", "adam", "adamw", "lars", "lamb"] = "adamw"
    lr: float = 3e-3  # peak learning rate
    schedule: Literal["constant", "cosine", "linear", "wsd"] = "cosine"
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    final_lr_ratio: float = 0.1  # lr at the end of decay, as a fraction of the peak
    decay_fraction: float = 0.2  # wsd: fraction of training spent decaying
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "linear"  # wsd: shape of the final decay (Hägele et al. 2024): lr·(r+(1−r)·f(x)), f = 1−x | (1+cos πx)/2 | 1−√x
    weight_decay: float = 0.0  # decoupled everywhere (w -= lr * wd * w); adam refuses it: use adamw
    decay_norms_and_biases: bool = False  # default: no decay on norms, biases, embeddings
    decay_embeddings: bool = False
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    momentum: float = 0.9  # momentum / nesterov / lars
    trust_coefficient: float = 0.001  # lars: eta in eta·‖w‖/(‖g‖+wd·‖w‖) (You et al. 2017); biases/norms step at lr·eta
    clip_norm: float = 1.0  # global-norm clipping; 0 disables

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr = {self.lr}: must be > 0")
        if not self.trust_coefficient > 0:
            raise ConfigError(f"optim.trust_coefficient = {self.trust_coefficient}: must be > 0")
        _nonnegative(self, "warmup_steps", "weight_decay", "clip_norm", "eps")
        for key in ("b1", "b2", "momentum", "final_lr_ratio"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"optim.{key} = {getattr(self, key)}: must be in [0, 1]")
        if self.name == "adam" and self.weight_decay > 0:
            raise ConfigError(
                f"optim.weight_decay = {self.weight_decay} with optim.name = 'adam': decoupled "
                "decay on Adam is 'adamw'; use optim.name = 'adamw' or weight_decay = 0"
            )
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"optim.decay_fraction = {self.decay_fraction}: must be in (0, 1]")


@dataclass(frozen=True)
class TrainConfig:
    """Steps, batch, evaluation, checkpoints, parallelism."""

    steps: int = 200
    batch_size: int = 16  # global batch, in sequences
    micro_batches: int = 1  # gradient accumulation: batch_size / micro_batches per pass
    # log the gradient noise scale B_simple (scaling.train.noise_scale; McCandlish et al. 2018)
    noise_scale: bool = False
    seed: int = 0  # initialisation and batch order
    data_seed: int = -1  # -1: same as seed
    eval_every: int = 50  # 0: only at the end
    # Evaluation on the corpus's fixed eval set (scaling.data.dataset: windows spread over every
    # validation document, the same for every run of a corpus). The final evaluation uses
    # eval_tokens of it (rounded down to whole windows of seq_len); the evaluations along
    # the learning curve use its first curve_eval_tokens (0: all eval_tokens).
    eval_tokens: int = 131072
    curve_eval_tokens: int = 32768
    # The final eval also records the mean loss at each position t = 0..seq_len-1 of the
    # window (result.json: eval_loss_by_position, with its cluster-robust stderr)
    eval_per_position: bool = False
    log_every: int = 10
    checkpoint_every: int = 100  # 0: only the final save
    keep_checkpoints: int = 2
    # "auto": a mesh if train.mesh is set, else shard_map on several devices, none on one
    parallel: Literal["auto", "none", "pmap", "shard_map", "mesh"] = "auto"
    # Device mesh of the "mesh" driver (scaling.train.mesh): { data = -1, fsdp = 1, model = 1 }.
    # data splits the batch; fsdp splits the batch too and shards every large parameter and
    # its optimizer moments; model splits attention heads and the MLP hidden dimension.
    # -1: the devices left over (one axis at most); an axis left out is 1 (data: -1).
    # Empty: no mesh (the drivers none / shard_map / pmap replicate the state).
    mesh: dict[str, int] = field(default_factory=dict)
    divergence_factor: float = 3.0  # loss above factor * initial loss => diverged
    # A sustained rise of the smoothed loss this fraction above its running minimum (and a
    # final eval loss this far above the run's best) => diverged (scaling.train.monitor.DivergenceMonitor)
    divergence_rise: float = 0.25
    init_from: str = ""      # a run folder (relative paths: to this run's folder) whose checkpoint at init_step starts this run: a cooldown branch of a trunk run
    init_step: int = 0
    save_steps: str = ""     # comma-separated steps at which a checkpoint is kept for good (in keep/), for branches
    eval_steps: str = ""     # comma-separated extra curve-eval steps (a cooldown trunk: its branches' eval steps)
    progress: bool = True
    # Trackers (scaling.train.tracking): "jsonl" (metrics.jsonl, always on), "tensorboard"
    # (event files in <run>/tensorboard), "wandb" (Weights & Biases; works offline with
    # WANDB_MODE=offline). A list, trackers = ["tensorboard", "wandb"], or the same names as
    # one comma-separated string, "tensorboard,wandb"; kept as that string.
    trackers: str = field(default="", metadata={NAME_LIST: True})
    wandb_project: str = "scalinglab"
    # "a,b": capture a jax.profiler trace of steps a to b (1-based, inclusive) into
    # <run>/profile (TensorBoard's profile plugin, or Perfetto); "": off
    profile_steps: str = ""

    @property
    def tracker_names(self) -> tuple[str, ...]:
        """The trackers asked for, jsonl first and always (each name once)."""
        names = [n.strip() for n in self.trackers.split(",") if n.strip()]
        return tuple(dict.fromkeys(["jsonl", *names]))

    @property
    def profile_window(self) -> tuple[int, int] | None:
        """(first, last) step of `profile_steps`, or None when off."""
        parts = [p.strip() for p in self.profile_steps.split(",") if p.strip()]
        if not parts:
            return None
        return int(parts[0]), int(parts[-1])

    @property
    def kept_steps(self) -> tuple[int, ...]:
        """The steps of `save_steps`, sorted (checkpoints kept for good, for branches)."""
        return tuple(sorted({int(s) for s in self.save_steps.split(",") if s.strip().isdigit()}))

    @property
    def extra_eval_steps(self) -> frozenset[int]:
        """The steps of `eval_steps` (curve evals besides every eval_every-th step)."""
        return frozenset(int(s) for s in self.eval_steps.split(",") if s.strip().isdigit())

    @property
    def batch_seed(self) -> int:
        return self.seed if self.data_seed < 0 else self.data_seed

    def validate(self) -> None:
        _positive(self, "steps", "batch_size", "micro_batches", "eval_tokens", "log_every",
                  "keep_checkpoints", "divergence_rise")
        _nonnegative(self, "eval_every", "checkpoint_every", "curve_eval_tokens")
        if self.batch_size % self.micro_batches:
            raise ConfigError(
                f"train.micro_batches = {self.micro_batches} does not divide "
                f"train.batch_size = {self.batch_size}"
            )
        if self.init_step < 0 or (self.init_from and not 0 < self.init_step < self.steps):
            raise ConfigError(
                f"train.init_step = {self.init_step}: with train.init_from it must be in "
                f"(0, train.steps = {self.steps})"
            )
        if self.init_step and not self.init_from:
            raise ConfigError(f"train.init_step = {self.init_step} needs train.init_from (a run "
                              "folder to start from)")
        bad = [s for s in self.save_steps.split(",") if s.strip() and not s.strip().isdigit()]
        if bad or any(not 0 < k <= self.steps for k in self.kept_steps):
            raise ConfigError(
                f"train.save_steps = {self.save_steps!r}: comma-separated steps in "
                f"[1, train.steps = {self.steps}]"
            )
        bad = [s for s in self.eval_steps.split(",") if s.strip() and not s.strip().isdigit()]
        if bad or any(not 0 < k <= self.steps for k in self.extra_eval_steps):
            raise ConfigError(f"train.eval_steps = {self.eval_steps!r}: comma-separated steps in "
                              f"[1, train.steps = {self.steps}]")
        if not self.divergence_factor > 1.0:
            raise ConfigError(
                f"train.divergence_factor = {self.divergence_factor}: must be > 1"
            )
        self._validate_tracking()
        self._validate_mesh()

    @property
    def mesh_axes(self) -> dict[str, int] | None:
        """{data, fsdp, model} sizes as configured (-1: the rest of the devices), every axis
        present; None when no mesh is used (train.parallel other than auto / mesh)."""
        if not self.mesh and self.parallel != "mesh":
            return None
        return {a: self.mesh.get(a, -1 if a == "data" and -1 not in self.mesh.values() else 1)
                for a in MESH_AXES}

    def _validate_mesh(self) -> None:
        if not self.mesh:
            return
        allowed = ", ".join(MESH_AXES)
        unknown = [k for k in self.mesh if k not in MESH_AXES]
        if unknown:
            raise ConfigError(f"train.mesh: unknown axis {unknown[0]!r}; allowed: {allowed}, "
                              "e.g. train.mesh = { data = -1, fsdp = 2, model = 1 }")
        bad = [k for k, v in self.mesh.items() if not (v == -1 or v >= 1)]
        if bad:
            raise ConfigError(f"train.mesh.{bad[0]} = {self.mesh[bad[0]]}: must be >= 1, or -1 "
                              "for the devices left over")
        if list(self.mesh.values()).count(-1) > 1:
            raise ConfigError(f"train.mesh = {self.mesh}: -1 (the devices left over) on one "
                              "axis at most")
        if self.parallel not in ("auto", "mesh"):
            raise ConfigError(f"train.mesh = {self.mesh} with train.parallel = "
                              f"{self.parallel!r}: a mesh is its own driver; set "
                              "train.parallel = 'auto' or 'mesh', or leave train.mesh out")

    def _validate_tracking(self) -> None:
        unknown = [n for n in self.tracker_names if n not in TRACKERS]
        if unknown:
            raise ConfigError(
                f"train.trackers = {self.trackers!r}: unknown {', '.join(map(repr, unknown))}; "
                f"allowed: a list (or a comma-separated string) of {', '.join(map(repr, TRACKERS))}"
            )
        if "wandb" in self.tracker_names and not self.wandb_project.strip():
            raise ConfigError("train.wandb_project = '': W&B needs a project name")
        parts = [p.strip() for p in self.profile_steps.split(",") if p.strip()]
        ok = 1 <= len(parts) <= 2 and all(p.isdigit() for p in parts)
        if parts and not (ok and 1 <= int(parts[0]) <= int(parts[-1]) <= self.steps):
            raise ConfigError(
                f"train.profile_steps = {self.profile_steps!r}: write 'first,last' with "
                f"1 <= first <= last <= train.steps = {self.steps} (e.g. '5,8'), or '' for off"
            )

MESH_AXES = ("data", "fsdp", "model")  # train.mesh's axes, outermost first

SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


def _positive(obj: Any, *keys: str) -> None:
    section = _section_name(obj)
    for key in keys:
        if not getattr(obj, key) > 0:
            raise ConfigError(f"{section}.{key} = {getattr(obj, key)}: must be > 0")


def _nonnegative(obj: Any, *keys: str) -> None:
    section = _section_name(obj)
    for key in keys:
        if getattr(obj, key) < 0:
            raise ConfigError(f"{section}.{key} = {getattr(obj, key)}: must be >= 0")


# Float fields that may hold inf or nan, as "section.key". A field listed here must say
# in its comment what a non-finite value means; none does yet.
NON_FINITE_ALLOWED: frozenset[str] = frozenset()


def check_finite(obj: Any, section: str) -> None:
    """Every float field of a section is finite unless NON_FINITE_ALLOWED lists it.

    inf and nan parse as TOML floats and pass comparisons such as `lr > 0` (inf) or
    none at all (nan), then train to a diverged or meaningless run; checked here for
    every float of every section, so that a new field is covered without a line of its own.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if (isinstance(value, float) and not math.isfinite(value)
                and f"{section}.{f.name}" not in NON_FINITE_ALLOWED):
            raise ConfigError(f"{section}.{f.name} = {value}: must be a finite number")


def _section_name(obj: Any) -> str:
    return next(s for s, cls in SECTIONS.items() if isinstance(obj, cls))
