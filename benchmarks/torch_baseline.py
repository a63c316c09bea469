"""A straightforward PyTorch (eager) version of scaling.models.transformer's transformer and train step.

Only a yardstick for benchmarks/throughput.py: same shapes, same math (pre-LayerNorm,
fused causal attention through F.scaled_dot_product_attention, tanh-GELU MLP, tied
embeddings, AdamW, mean next-token cross-entropy), no torch.compile. torch is not a
dependency of scalinglab; this file imports it only when run.

    python benchmarks/torch_baseline.py        # prints tokens/s for the three CPU shapes
"""

from __future__ import annotations

import math
import sys
import time


def build(n_layer: int, d_model: int, n_head: int, seq_len: int, vocab_size: int,
          d_ff: int = 0, threads: int | None = None, gelu: str = "tanh"):
    """(model, optimizer, step(batch_Bx(T+1)) -> loss float).

    gelu "tanh" is the project's activation; "none" (the exact, erf GELU) is nanoGPT's
    default, for a side-by-side with that code's choices."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    d_ff = d_ff or 4 * d_model
    std, out_std = 0.02, 0.02 / math.sqrt(2 * n_layer)

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = tnn.LayerNorm(d_model)
            self.qkv = tnn.Linear(d_model, 3 * d_model)
            self.attn_proj = tnn.Linear(d_model, d_model)
            self.ln_2 = tnn.LayerNorm(d_model)
            self.fc = tnn.Linear(d_model, d_ff)
            self.mlp_proj = tnn.Linear(d_ff, d_model)
            for lin, s in ((self.qkv, std), (self.attn_proj, out_std), (self.fc, std),
                           (self.mlp_proj, out_std)):
                tnn.init.normal_(lin.weight, std=s)
                tnn.init.zeros_(lin.bias)

        def forward(self, x_BxTxD):
            B, T, D = x_BxTxD.shape
            h = self.ln_1(x_BxTxD)
            q, k, v = self.qkv(h).view(B, T, 3, n_head, D // n_head).permute(2, 0, 3, 1, 4)
            o_BxHxTxK = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x_BxTxD = x_BxTxD + self.attn_proj(o_BxHxTxK.transpose(1, 2).reshape(B, T, D))
            h = F.gelu(self.fc(self.ln_2(x_BxTxD)), approximate=gelu)
            return x_BxTxD + self.mlp_proj(h)

    class LM(tnn.Module):
        def __init__(self):
            super().__init__()
            self.token_embed = tnn.Embedding(vocab_size, d_model)
            self.pos_embed = tnn.Embedding(seq_len, d_model)
            tnn.init.normal_(self.token_embed.weight, std=std)
            tnn.init.normal_(self.pos_embed.weight, std=std)
            self.blocks = tnn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = tnn.LayerNorm(d_model)

        def forward(self, tokens_BxT):
            T = tokens_BxT.shape[1]
            x = self.token_embed(tokens_BxT) + self.pos_embed.weight[:T]
            for blk in self.blocks:
                x = blk(x)
            return self.ln_f(x) @ self.token_embed.weight.t()  # tied head

    model = LM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

    def step(batch):
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return model, opt, step


def n_non_embedding(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)


def measure(n_layer, d_model, n_head, seq_len, batch_size, vocab_size=256, seconds=4.0,
            min_steps=3, max_steps=50, threads=None) -> dict:
    """Median step time of the eager train step; returns tokens/s and setup time."""
    import torch

    t0 = time.perf_counter()
    model, _, step = build(n_layer, d_model, n_head, seq_len, vocab_size, threads=threads)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=g)
    step(batch)  # warm-up (allocator, oneDNN primitive caches)
    setup = time.perf_counter() - t0
    times = []
    end = time.perf_counter() + seconds
    while len(times) < min_steps or (time.perf_counter() < end and len(times) < max_steps):
        t = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    return {"tokens_per_s": batch_size * seq_len / med, "step_s": med, "setup_s": setup,
            "n": n_non_embedding(model), "steps": len(times)}


def serve(n_layer, d_model, n_head, seq_len, batch_size, vocab_size=256, threads=0,
          gelu="tanh") -> None:
    """Worker for benchmarks/throughput.py: reads 'run N' lines on stdin and answers each
    with N step times (seconds) on stdout; its own process, so PyTorch gets its default
    allocator and threads and does not share them with JAX."""
    import torch

    model, _, step = build(n_layer, d_model, n_head, seq_len, vocab_size, threads=threads,
                           gelu=gelu)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=g)
    step(batch)
    step(batch)
    print(f"ready {n_non_embedding(model)} {torch.__version__} {torch.get_num_threads()}",
          flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] != "run":
            break
        times = []
        for _ in range(int(cmd[1])):
            t = time.perf_counter()
            step(batch)
            times.append(time.perf_counter() - t)
        print(" ".join(f"{x:.6f}" for x in times), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        *ints, gelu = sys.argv[2:]
        serve(*(int(a) for a in ints), gelu=gelu)
        sys.exit(0)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for L, d, H, T, B, V in ((2, 128, 4, 128, 32, 256), (4, 256, 4, 256, 16, 256),
                             (6, 384, 6, 256, 8, 512)):
        r = measure(L, d, H, T, B, V)
        print(f"L{L} d{d} H{H} T{T} B{B} V{V}: {r['tokens_per_s']:8.0f} tokens/s  "
              f"step {r['step_s'] * 1e3:7.1f} ms  N={r['n']}")
