"""Golden values from the Python reference, for the Rust tests. Each sub-command reads and
writes safetensors files so that both sides see the same bytes."""

import argparse
import json

import torch
from safetensors.torch import load_file, save_file

import reference


def model_cfg(path):
    with open(path) as f:
        return json.load(f).get("model", {})


def diffusion_cfg(path):
    with open(path) as f:
        return json.load(f).get("diffusion", {})


def cmd_keys(a):
    model = reference.build(model_cfg(a.config))
    print(json.dumps({k: list(v.shape) for k, v in model.state_dict().items()}))


def cmd_init(a):
    """A model initialised by PyTorch, saved with the original's torch.save(state_dict)."""
    torch.manual_seed(a.seed)
    model = reference.build(model_cfg(a.config))
    torch.save(model.state_dict(), a.out)


def cmd_forward(a):
    """Loads weights strictly, runs forward and the L1 loss's backward on the given inputs."""
    model = reference.build(model_cfg(a.config), a.attention)
    model.load_state_dict(reference.load_state_dict_any(a.weights), strict=True)
    inputs = load_file(a.inputs)
    out = model(inputs["x"], inputs["y"], inputs["t"])
    loss = torch.nn.functional.l1_loss(out, inputs["target"])
    loss.backward()
    result = {"out": out.detach().contiguous(), "loss": loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        result["grad." + name] = p.grad.contiguous()
    save_file(result, a.out)


def cmd_schedule(a):
    d = reference.Diffusion(**diffusion_cfg(a.config))
    save_file({k: getattr(d, k).contiguous() for k in
               ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "variance")}, a.out)


def cmd_sample(a):
    """The original's denoise loop after torch.manual_seed(seed)."""
    model = reference.build(model_cfg(a.config), a.attention)
    model.load_state_dict(reference.load_state_dict_any(a.weights), strict=True)
    m = model_cfg(a.config)
    d = reference.Diffusion(**diffusion_cfg(a.config))
    torch.manual_seed(a.seed)
    size = m.get("img_size", 256)
    x = torch.randn(a.num, m.get("channel", 3), size, size)
    y = torch.full((a.num,), a.label, dtype=torch.long)
    steps = d.denoise(model, x, y)
    save_file({"images": steps[-1].contiguous(), "noise": steps[0].contiguous()}, a.out)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("keys", "init", "forward", "schedule", "sample"):
        s = sub.add_parser(name)
        s.add_argument("--config", required=True)
        s.add_argument("--out")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--weights")
        s.add_argument("--inputs")
        s.add_argument("--attention", default="naive", choices=["naive", "sdpa"])
        s.add_argument("--num", type=int, default=1)
        s.add_argument("--label", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    globals()["cmd_" + a.cmd](a)


if __name__ == "__main__":
    main()
