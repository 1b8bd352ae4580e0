"""The PyTorch side of the autoencoder measurements of scripts/bench_latent, one measurement per
process, printed as a JSON line. The published `taesd.py` is imported from where it lies beside
the checkout (`--taesd`, by default `../shared/models/taef2` from the repository root); it is
never copied into the project.

Sub-commands:
  prepare  the benchmark's batch: the first `--count` photos of `--photos`, the shorter side
           resized to `--side` and centre-cropped, RGB in [0, 1]; written with PyTorch's
           encoding and decoding of it to `--out` (safetensors: `image` (N, 3, S, S),
           `encoded` = encoder(image) (N, 32, S/8, S/8), `decoded` = decoder(encoded) clamped
           to [0, 1]), so the Rust side measures on the same batch and reports its distance
  encode   images/s of the taef2 encoder on that batch (`--steps` timed batches after one
           warm-up batch), without gradient, on `--threads` threads; `--channels-last` moves
           the module and its input to torch.channels_last first (what a PyTorch user can do
           for speed; the published code runs in the default format)
  decode   the same for the decoder, on PyTorch's latents of the batch
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def published(taesd_dir):
    sys.path.insert(0, str(taesd_dir))
    import taesd

    return taesd


def taef2(taesd_dir):
    """The published TAESD module built as for taef2 (32 latent channels, the flux_2 variant's
    GroupNorm branch), with the taef2 weights beside `taesd.py`."""
    d = Path(taesd_dir)
    model = published(d).TAESD(
        encoder_path=d / "taef2_encoder.pth",
        decoder_path=d / "taef2_decoder.pth",
        latent_channels=32,
        arch_variant="flux_2",
    )
    return model.eval()


def photos(folder, count, side):
    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = []
    for path in files[:count]:
        im = Image.open(path).convert("RGB")
        scale = side / min(im.size)
        w, h = max(side, round(im.size[0] * scale)), max(side, round(im.size[1] * scale))
        im = im.resize((w, h), Image.BICUBIC)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
        pixels = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        images.append(pixels.view(side, side, 3).permute(2, 0, 1).float() / 255)
    if len(images) < count:
        sys.exit(f"{folder}: {len(images)} photos, {count} wanted")
    return torch.stack(images)


@torch.no_grad()
def cmd_prepare(a):
    from safetensors.torch import save_file

    model = taef2(a.taesd)
    image = photos(a.photos, a.count, a.side)
    encoded = model.encoder(image)
    decoded = model.decoder(encoded).clamp(0, 1)
    tensors = {"image": image, "encoded": encoded, "decoded": decoded}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(a.out))


@torch.no_grad()
def cmd_measure(a):
    from safetensors.torch import load_file

    model = taef2(a.taesd)
    batch = load_file(str(a.inputs))
    if a.cmd == "encode":
        net, x, want = model.encoder, batch["image"], batch["encoded"]
    else:
        net, x, want = model.decoder, batch["encoded"], batch["decoded"]
    if a.channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)

    def run():
        y = net(x)
        return y.clamp(0, 1) if a.cmd == "decode" else y  # the published way to decode

    diff = (run() - want).abs().max().item()  # warm-up
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(a.steps):
        run()
    per = (time.perf_counter() - start) / a.steps
    cpu = (time.process_time() - start_cpu) / a.steps
    n = x.shape[0]
    print(json.dumps({
        "images_per_sec": n / per,
        "seconds_per_batch": per,
        "cpu_seconds_per_batch": cpu,
        "threads": torch.get_num_threads(),
        "max_abs_diff_from_pytorch": diff,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--taesd", type=Path, default=ROOT.parent / "shared/models/taef2")
    p.add_argument("--threads", type=int, default=2)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--photos", type=Path, required=True)
    s.add_argument("--count", type=int, default=8)
    s.add_argument("--side", type=int, default=256)
    s.add_argument("--out", type=Path, required=True)
    for cmd in ("encode", "decode"):
        s = sub.add_parser(cmd)
        s.add_argument("--inputs", type=Path, required=True)
        s.add_argument("--steps", type=int, default=5)
        s.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    (cmd_prepare if a.cmd == "prepare" else cmd_measure)(a)


if __name__ == "__main__":
    main()
