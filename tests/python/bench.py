"""The Python side of scripts/bench: the project's reference of the original, one measurement per
process, printed as a JSON line. BENCH_DEVICE=cuda measures on the GPU (scripts/gpu_bench);
the default is the CPU. BENCH_PY_MODE picks the PyTorch peer: `original` (default: naive
attention, fp32, as the original computes it), `sdpa` (fused scaled_dot_product_attention with
the original's 1/sqrt(L) scale, fp32, eager), `bf16` (sdpa under bf16 autocast, eager),
`compile` (sdpa fp32 under torch.compile) and `compile_bf16` (sdpa under bf16 autocast and
torch.compile). BENCH_THREADS=N sets torch's intra-op threads (default: torch's own choice)."""

import contextlib

import json
import os
import resource
import sys
import time

import torch

import golden
import reference


def main():
    what, config, arg, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with open(config) as f:
        cfg = json.load(f)
    m = cfg.get("model", {})
    dev = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
    if "BENCH_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    torch.manual_seed(0)
    mode = os.environ.get("BENCH_PY_MODE", "original")
    modes = ("original", "sdpa", "bf16", "compile", "compile_bf16")
    if mode not in modes:
        sys.exit(f"BENCH_PY_MODE={mode}: expected one of {', '.join(modes)}")
    compiled = mode.startswith("compile")
    model = reference.build(m, None if mode == "original" else "fused").to(dev)
    forward = torch.compile(model) if compiled else model

    def autocast():
        if mode in ("bf16", "compile_bf16"):
            return torch.autocast(dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    size, channel = m.get("img_size", 256), m.get("channel", 3)
    out = {}
    if what == "train":
        b = int(arg)
        diffusion = reference.Diffusion(**golden.diffusion_cfg(config))
        diffusion.alphas_cumprod = diffusion.alphas_cumprod.to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.get("train", {}).get("lr", 1e-6))
        images = torch.randint(0, 256, (b, channel, size, size), dtype=torch.uint8)
        y = torch.zeros(b, dtype=torch.long, device=dev)

        def step():
            x = images.to(dev).float() / 255 * 2 - 1
            t = torch.randint(0, diffusion.max_t, (b,), device=dev)
            xt, noise = diffusion.add_noise(x, t)
            ac = diffusion.alphas_cumprod[t].view(b, 1, 1, 1)
            with autocast():
                # The config's objective, as the Rust step computes it (the original's: L1 on ε).
                loss = golden.objective_loss(config, forward(xt, y, t), x, noise, ac)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()

        step()
        if compiled:
            step()  # the second call may still compile (the first step changed optimizer state)
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        per = (time.perf_counter() - start) / steps
        cpu = (time.process_time() - start_cpu) / steps  # all threads: what other jobs do not inflate
        out = {"seconds_per_step": per, "cpu_seconds_per_step": cpu, "images_per_sec": b / per}
    elif what == "forward":
        b = int(arg)
        x = torch.randn(b, channel, size, size, device=dev)
        y, t = torch.zeros(b, dtype=torch.long, device=dev), torch.full((b,), 500, device=dev)
        with torch.no_grad(), autocast():
            forward(x, y, t)
            start = time.perf_counter()
            for _ in range(steps):
                forward(x, y, t).sum().item()
        out = {"seconds": (time.perf_counter() - start) / steps}
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
