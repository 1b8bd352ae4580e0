"""Golden values from the Python reference, for the Rust tests. Each sub-command reads and
writes safetensors files so that both sides see the same bytes."""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

import reference


def model_cfg(path):
    with open(path) as f:
        return json.load(f).get("model", {})


def diffusion_cfg(path):
    """The schedule's fields of the `diffusion` section (its `prediction` is the objective's)."""
    with open(path) as f:
        d = json.load(f).get("diffusion", {})
    return {k: d[k] for k in ("max_t", "beta_start", "beta_end") if k in d}


def objective_loss(config_path, out, x0, noise, ac):
    """The training loss written from docs/OBJECTIVES.md: the target of diffusion.prediction
    (epsilon, x0, or v = sqrt(ab)·eps − sqrt(1 − ab)·x0), the distance train.loss (l1, l2), and
    train.loss_weighting (none, or min_snr: each image's mean distance times min(SNR, gamma),
    divided for epsilon by SNR under l2 and sqrt(SNR) under l1, for v by SNR + 1 under l2 and
    sqrt(SNR + 1) under l1, for x0 by 1)."""
    with open(config_path) as f:
        cfg = json.load(f)
    train = cfg.get("train", {})
    prediction = cfg.get("diffusion", {}).get("prediction", "epsilon")
    a, s = torch.sqrt(ac), torch.sqrt(1 - ac)
    target = {"epsilon": noise, "x0": x0, "v": a * noise - s * x0}[prediction]
    loss = train.get("loss", "l1")
    if train.get("loss_weighting", "none") == "none":
        f = torch.nn.functional.l1_loss if loss == "l1" else torch.nn.functional.mse_loss
        return f(out, target)
    diff = out - target
    per_image = (diff.abs() if loss == "l1" else diff ** 2).mean(dim=(1, 2, 3))
    snr = (ac / (1 - ac)).view(-1)
    clipped = torch.clamp(snr, max=train.get("min_snr_gamma", 5.0))
    scale = {"epsilon": snr, "x0": torch.ones_like(snr), "v": snr + 1}[prediction]
    weight = clipped / (scale if loss == "l2" else torch.sqrt(scale))
    return (per_image * weight).mean()


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
    """The original's denoise loop after torch.manual_seed(seed). With --decoder (a latent-space
    model): the DIT built at the latent's shape (img_size / 8, the decoder's channels), the loop
    without its clamp, then the latents un-normalised with --stats (JSON: mean, std) and decoded
    by the published taesd.py (imported from --taesd) into images in [-1, 1]."""
    m = dict(model_cfg(a.config))
    decoder = None
    if a.decoder:
        sys.path.insert(0, a.taesd)
        import taesd

        channels, arch = taesd.TAESD.guess_latent_channels_and_arch(None, os.path.basename(a.decoder))
        decoder = taesd.Decoder(channels, use_midblock_gn=arch == "flux_2")
        decoder.load_state_dict(torch.load(a.decoder, map_location="cpu", weights_only=True))
        m["img_size"], m["channel"] = m.get("img_size", 256) // 8, channels
    model = reference.build(m, a.attention)
    model.load_state_dict(reference.load_state_dict_any(a.weights), strict=True)
    d = reference.Diffusion(**diffusion_cfg(a.config))
    torch.manual_seed(a.seed)
    size = m.get("img_size", 256)
    x = torch.randn(a.num, m.get("channel", 3), size, size)
    y = torch.full((a.num,), a.label, dtype=torch.long)
    steps = d.denoise(model, x, y, clamp=decoder is None)
    images = steps[-1]
    if decoder is not None:
        with open(a.stats) as f:
            stats = json.load(f)
        mean = torch.tensor(stats["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(stats["std"], dtype=torch.float32).view(1, -1, 1, 1)
        with torch.no_grad():
            images = decoder(images * std + mean).clamp(0, 1) * 2 - 1
    save_file({"images": images.contiguous(), "noise": steps[0].contiguous()}, a.out)


def cmd_adam(a):
    """Two torch.optim.Adam steps (PyTorch's defaults, lr from --label as 1e-3) on given grads."""
    inputs = load_file(a.inputs)
    names = sorted(k[len("param."):] for k in inputs if k.startswith("param."))
    params = [torch.nn.Parameter(inputs["param." + n].clone()) for n in names]
    opt = torch.optim.Adam(params, lr=1e-3)
    for step in (1, 2):
        for n, p in zip(names, params):
            p.grad = inputs[f"grad{step}.{n}"].clone()
        opt.step()
    out = {"param." + n: p.detach().contiguous() for n, p in zip(names, params)}
    for n, p in zip(names, params):
        st = opt.state[p]
        out["exp_avg." + n] = st["exp_avg"].contiguous()
        out["exp_avg_sq." + n] = st["exp_avg_sq"].contiguous()
    save_file(out, a.out)


def cmd_step(a):
    """One training step as the project's trainer runs it, written from the specification: x0 =
    image/255·2 − 1, x_t with the given t and noise, the loss (L1 on epsilon by default, else the
    config's objective), backward, global-norm clipping (train.grad_clip), one
    torch.optim.Adam step (train.lr), then the EMA (train.ema_decay)."""
    with open(a.config) as f:
        train = json.load(f).get("train", {})
    model = reference.build(model_cfg(a.config), a.attention)
    model.load_state_dict(reference.load_state_dict_any(a.weights), strict=True)
    d = reference.Diffusion(**diffusion_cfg(a.config))
    inputs = load_file(a.inputs)
    x0 = inputs["images"].float() / 255 * 2 - 1
    ac = d.alphas_cumprod[inputs["t"]].view(-1, 1, 1, 1)
    xt = torch.sqrt(ac) * x0 + torch.sqrt(1 - ac) * inputs["noise"]
    loss = objective_loss(a.config, model(xt, inputs["labels"], inputs["t"]), x0, inputs["noise"], ac)
    ema = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=train.get("lr", 1e-6))
    opt.zero_grad()
    loss.backward()
    if train.get("grad_clip", 1.0) > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.get("grad_clip", 1.0))
    out = {"loss": loss.detach().reshape(1)}
    out.update({"grad." + n: p.grad.contiguous() for n, p in model.named_parameters()})
    opt.step()
    decay = train.get("ema_decay", 0.999)
    for n, p in model.named_parameters():
        out["param." + n] = p.detach().contiguous()
        out["ema." + n] = (ema[n] * decay + p.detach() * (1 - decay)).contiguous()
    save_file(out, a.out)


def cmd_tb_tags(a):
    """Reads a TensorBoard log folder with tensorboard's own event reader; prints a summary."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(a.config, size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    out = {
        "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
        "histograms": {t: [[e.step, e.histogram_value.num, e.histogram_value.min, e.histogram_value.max]
                           for e in acc.Histograms(t)] for t in tags["histograms"]},
        "images": {t: [[e.step, e.width, e.height, len(e.encoded_image_string)] for e in acc.Images(t)]
                   for t in tags["images"]},
        "graph": bool(tags.get("graph")),
        "graph_nodes": len(acc.Graph().node) if tags.get("graph") else 0,
    }
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("keys", "init", "forward", "schedule", "sample", "adam", "step", "tb_tags"):
        s = sub.add_parser(name)
        s.add_argument("--config", required=True)
        s.add_argument("--out")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--weights")
        s.add_argument("--inputs")
        s.add_argument("--attention", default="naive", choices=["naive", "sdpa"])
        s.add_argument("--num", type=int, default=1)
        s.add_argument("--label", type=int, default=0)
        s.add_argument("--decoder")
        s.add_argument("--stats")
        s.add_argument("--taesd")
    a = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    globals()["cmd_" + a.cmd](a)


if __name__ == "__main__":
    main()
