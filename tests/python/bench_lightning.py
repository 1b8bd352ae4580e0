"""The PyTorch side of scripts/bench_lightning: training steps of LightningDiT's published class
(`--repo`, run in place, eager: its @torch.compile decorators disabled) with its transport's
flow-matching loss, as this project's trainer takes them: the same model, batch, loss terms,
gradient clipping, Adam (AdamW with no weight decay) and EMA. Prints one JSON line: CPU and
wall seconds per step after one warm-up step.

  bench_lightning.py --repo DIR --config CONFIG.json --batch B --steps N
"""
import argparse, json, os, resource, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--repo", required=True)
ap.add_argument("--config", required=True)
ap.add_argument("--batch", type=int, required=True)
ap.add_argument("--steps", type=int, required=True)
ap.add_argument("--profile", help="write torch.profiler's Chrome trace of the timed steps here")
a = ap.parse_args()
os.environ["TORCHDYNAMO_DISABLE"] = "1"
sys.path.insert(0, a.repo)

import torch
from models.lightningdit import LightningDiT
from transport import create_transport

if "BENCH_THREADS" in os.environ:
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
cfg = json.load(open(a.config))
m, t = cfg["model"], cfg["train"]
switches = ["use_qknorm", "use_swiglu", "use_rope", "use_rmsnorm", "wo_shift", "learn_sigma"]
model = LightningDiT(input_size=m["img_size"], patch_size=m["patch_size"], in_channels=m["channel"],
                     hidden_size=m["emb_size"], depth=m["dit_num"], num_heads=m["head"],
                     mlp_ratio=m.get("mlp_ratio", 4.0), class_dropout_prob=0.0, num_classes=m.get("label_num", 1),
                     **{s: m.get(s, False) for s in switches})
model.train()
ema = [p.detach().clone() for p in model.parameters()]
opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], betas=(0.9, t.get("adam_beta2", 0.999)), weight_decay=0)
transport = create_transport("Linear", "velocity", None, None, None,
                             use_cosine_loss=t.get("cosine_loss", False), use_lognorm=True)
x1 = torch.randn(a.batch, m["channel"], m["img_size"], m["img_size"])
y = torch.zeros(a.batch, dtype=torch.long)


def step():
    terms = transport.training_losses(model, x1, dict(y=y))
    loss = terms["loss"].mean() + (terms["cos_loss"].mean() if "cos_loss" in terms else 0)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), t.get("grad_clip", 1.0))
    opt.step()
    with torch.no_grad():
        for e, p in zip(ema, model.parameters()):
            e.lerp_(p, 1 - t.get("ema_decay", 0.999))
    return loss.item()


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


step()
profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if a.profile else None
if profiler:
    profiler.start()
wall, c = time.perf_counter(), cpu()
for _ in range(a.steps):
    step()
n = a.steps
if profiler:
    profiler.stop()
    profiler.export_chrome_trace(a.profile)
print(json.dumps({"seconds_per_step": (time.perf_counter() - wall) / n, "cpu_seconds_per_step": (cpu() - c) / n}))
