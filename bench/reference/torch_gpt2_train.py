#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Same-day reference point for bench_train's GPT-2 shape: PyTorch's training throughput
# (forward, cross-entropy, backward, AdamW) on GPT-2 with 4 layers, dim 256, 4 heads,
# vocab 50257, context 1024, B = 4, T = 64, random weights, 2 threads. The reference
# points (llm.c ~526 tok/s, PyTorch ~725 tok/s) were measured on a faster day of this VM; the
# ratio today / 725 rescales them. Not used by the tests or CI (needs Debian's python3-torch).
#
# usage: /usr/bin/python3 bench/reference/torch_gpt2_train.py [STEPS]
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)
L, C, H, V, MAXT, B, T = 4, 256, 4, 50257, 1024, 4, 64


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.fc_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        heads = lambda t: t.view(B, T, H, C // H).transpose(1, 2)
        att = (heads(q) @ heads(k).transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        x = x + self.proj((att @ heads(v)).transpose(1, 2).reshape(B, T, C))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(MAXT, C)
        self.blocks, self.ln_f = nn.ModuleList(Block() for _ in range(L)), nn.LayerNorm(C)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x) @ self.wte.weight.t()  # tied classifier, as GPT-2


model = GPT()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
tokens = torch.randint(0, V, (B, T + 1))
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
times = []
for i in range(steps + 3):
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(tokens[:, :-1]).view(-1, V), tokens[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if i >= 3:  # warm-up steps excluded
        times.append(time.perf_counter() - t0)
params = sum(p.numel() for p in model.parameters())
print(f"pytorch {torch.__version__} GPT-2 L{L} C{C} V{V} ({params / 1e6:.1f}M params), B={B} T={T}: "
      f"median {B * T / statistics.median(times):.0f} tok/s over {steps} steps")
