"""FIMPConv vs the naive reference (one nn.MultiheadAttention call per edge): forward+backward speed and memory.

    python bench/fimp_layer.py                 # CPU, three graph sizes
    python bench/fimp_layer.py --device cuda   # on a GPU machine

Each (implementation, size) runs in its own process, so peak memory is that run's alone: peak RSS
growth over the process's baseline on CPU, ``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = [(64, 512), (256, 2048), (1024, 8192)]  # (nodes, edges)
TOKENS, CHANNELS, HEADS = 16, 64, 4


def run_one(impl: str, n_nodes: int, n_edges: int, device: str, repeats: int) -> dict:
    import torch
    from torch import nn

    from fimp.conv import FIMPConv

    torch.manual_seed(0)
    conv = FIMPConv(CHANNELS, HEADS).to(device)
    x = torch.randn(n_nodes, TOKENS, CHANNELS, device=device, requires_grad=True)
    edge_index = torch.randint(0, n_nodes, (2, n_edges), device=device)
    if impl == "naive":
        attention = nn.MultiheadAttention(CHANNELS, HEADS, batch_first=True).to(device)

        def forward() -> torch.Tensor:
            # One attention call per edge; messages are collected and scattered once.
            messages = [attention(x[i][None], x[j][None], x[j][None], need_weights=False)[0][0]
                        for j, i in edge_index.t().tolist()]
            out = torch.zeros_like(x).index_add(0, edge_index[1], torch.stack(messages))  # (N, S, D)
            degree = torch.bincount(edge_index[1], minlength=n_nodes).clamp(min=1)
            return conv.update_proj(x + out / degree[:, None, None])
    else:
        def forward() -> torch.Tensor:
            return conv(x, edge_index)

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    forward().sum().backward()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        forward().sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
               else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024)
    return {"impl": impl, "nodes": n_nodes, "edges": n_edges, "seconds": seconds,
            "edges_per_s": n_edges / seconds, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # impl nodes edges: child process mode
    args = parser.parse_args()
    if args.one:
        impl, n, e = args.one
        print(json.dumps(run_one(impl, int(n), int(e), args.device, repeats=1 if impl == "naive" else 5)))
        return
    print(f"tokens S={TOKENS}, channels D={CHANNELS}, heads H={HEADS}, device {args.device}, forward+backward")
    print(f"{'impl':>6} {'nodes':>6} {'edges':>6} {'ms/step':>9} {'edges/s':>10} {'peak MB':>8}")
    for n, e in SIZES:
        for impl in ("fimp", "naive"):
            out = subprocess.run([sys.executable, __file__, "--device", args.device, "--one", impl, str(n), str(e)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['impl']:>6} {r['nodes']:>6} {r['edges']:>6} {1000 * r['seconds']:>9.1f} "
                  f"{r['edges_per_s']:>10.0f} {r['peak_mb']:>8.1f}")


if __name__ == "__main__":
    main()
