#!/usr/bin/env python
"""LightningDiT's published model and transport (hustvl/LightningDiT, MIT), run for the exchange
tests in tests/lightning.rs. The published files are read from the folder given by --repo (the
shared copy beside this checkout); nothing of them lives in this repository.

  init    --flags F --out W.safetensors [--seed S] [--perturb STD]  the class's own state_dict, every
          trainable parameter moved by N(0, STD) so that the zero-initialised layers take part
  forward --flags F --weights W --inputs IN --out OUT               OUT["out"] = model.eval()(x, t, y)
  loss    --flags F --weights W --inputs IN --out OUT               transport.training_losses on the
          given x1, x0, t: OUT["loss"] (mean of the MSE term), OUT["cos_loss"] (mean of the cosine term)
  sample  --flags F --weights W --inputs IN --out OUT --steps N [--method euler|heun2] [--cfg S]
          [--cfg-interval-start T] [--timestep-shift K]            the published ODE sampler from IN["z"]
          with labels IN["y"] on a grid of N + 1 points; guidance on every channel

F is the JSON of LightningDiT(...)'s keyword arguments. Strict loading throughout.
"""
import argparse, json, os, sys

ap = argparse.ArgumentParser()
ap.add_argument("mode", choices=["init", "forward", "loss", "sample"])
ap.add_argument("--repo", required=True)
ap.add_argument("--flags", required=True)
ap.add_argument("--weights")
ap.add_argument("--inputs")
ap.add_argument("--out", required=True)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--perturb", type=float, default=0.0)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--method", default="euler")
ap.add_argument("--cfg", type=float, default=1.0)
ap.add_argument("--cfg-interval-start", type=float, default=0.0)
ap.add_argument("--timestep-shift", type=float, default=0.0)
a = ap.parse_args()
os.environ["TORCHDYNAMO_DISABLE"] = "1"  # the published forwards carry @torch.compile
sys.path.insert(0, a.repo)

import torch
from safetensors.torch import load_file, save_file
from models.lightningdit import LightningDiT
from transport import create_transport, Sampler

torch.set_num_threads(2)
flags = json.loads(a.flags)
torch.manual_seed(a.seed)
model = LightningDiT(**flags)


def save(d, path):
    save_file({k: v.detach().contiguous().cpu() for k, v in d.items()}, path)


if a.mode == "init":
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and a.perturb > 0:
                p.add_(torch.randn_like(p) * a.perturb)
    save(model.state_dict(), a.out)
    sys.exit(0)

model.load_state_dict(load_file(a.weights), strict=True)
model.eval()  # the label embedder drops labels only in training mode
inp = load_file(a.inputs)

if a.mode == "forward":
    with torch.no_grad():
        out = model(inp["x"], inp["t"], inp["y"].long())
    save({"out": out}, a.out)
elif a.mode == "loss":
    transport = create_transport("Linear", "velocity", None, None, None, use_cosine_loss=True, use_lognorm=True)
    # The published draw of (t, x0) replaced by the test's own.
    transport.sample = lambda x1, *args: (inp["t"], inp["x0"], x1)
    terms = transport.training_losses(model, inp["x1"], dict(y=inp["y"].long()))
    save({"loss": terms["loss"].mean(), "cos_loss": terms["cos_loss"].mean()}, a.out)
else:
    transport = create_transport("Linear", "velocity", None, None, None, use_cosine_loss=True, use_lognorm=True)
    sample_fn = Sampler(transport).sample_ode(sampling_method=a.method, num_steps=a.steps + 1,
                                              timestep_shift=a.timestep_shift)
    z, y = inp["z"], inp["y"].long()
    null = flags.get("num_classes", 1000)

    def guided(x, t, y, cfg_scale, cfg_interval_start):
        # forward_with_cfg with guidance on every channel (the published one guides three).
        half = x[: len(x) // 2]
        cond, uncond = model(torch.cat([half, half]), t, y).chunk(2)
        g = cond if t[0] < cfg_interval_start else uncond + cfg_scale * (cond - uncond)
        return torch.cat([g, g])

    with torch.no_grad():
        if a.cfg != 1.0:
            kw = dict(y=torch.cat([y, torch.full_like(y, null)]), cfg_scale=a.cfg,
                      cfg_interval_start=a.cfg_interval_start)
            latents = sample_fn(torch.cat([z, z]), guided, **kw)[-1].chunk(2)[0]
        else:
            latents = sample_fn(z, model.forward, y=y)[-1]
    save({"latents": latents}, a.out)
