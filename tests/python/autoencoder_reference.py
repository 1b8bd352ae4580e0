"""Reference outputs of the published tiny autoencoders for tests/autoencoder.rs. The published
`taesd.py` is imported from where it lies beside the checkout (`--taesd`, by default
`../shared/models/taef2` from the repository root); it is never copied into the project.

Sub-commands (every output file is written into `--dir`):
  keys    print {variant: {"encoder": {name: shape}, "decoder": {...}}} as JSON
  random  seeded random weights of each variant named, in `<dir>/<variant>/`: encoder.pth,
          decoder.pth (torch.save of the state_dicts) and reference.safetensors
  photos  the given encoder/decoder weight files on resized photos: reference.safetensors
  evil    a .pth file whose pickle would run a shell command that creates `--marker`

reference.safetensors holds `image` (N, 3, 64, 64) in [0, 1], `encoded` = encoder(image),
`latent` (the decoder's input) and `decoded` = decoder(latent) clamped to [0, 1].
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ["taesd", "taesdxl", "taesd3", "taef1", "taef2"]
SIDE = 64


def published(taesd_dir):
    sys.path.insert(0, str(taesd_dir))
    import taesd

    return taesd


def shape_of(taesd, variant):
    """(latent channels, GroupNorm branch) of a variant, as the published code derives them
    from a weight file's name."""
    channels, arch = taesd.TAESD.guess_latent_channels_and_arch(None, f"{variant}_encoder.pth")
    return channels, arch == "flux_2"


def networks(taesd, variant):
    channels, gn = shape_of(taesd, variant)
    return taesd.Encoder(channels, use_midblock_gn=gn), taesd.Decoder(channels, use_midblock_gn=gn)


def randomize(net):
    """Weights that keep activations near unit scale through the whole stack (the default
    initialisation shrinks them to a few hundredths, where a 1e-4 tolerance proves little),
    GroupNorm affine terms away from 1 and 0."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() == 4:
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
            elif ".pool." in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))


def photos(folder, count):
    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = []
    for path in files[:count]:
        im = Image.open(path).convert("RGB").resize((SIDE, SIDE), Image.BILINEAR)
        pixels = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        images.append(pixels.view(SIDE, SIDE, 3).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


@torch.no_grad()
def reference(encoder, decoder, image, latent, out):
    from safetensors.torch import save_file

    encoder.eval(), decoder.eval()
    encoded = encoder(image)
    latent = encoded.clone() if latent is None else latent
    decoded = decoder(latent).clamp(0, 1)
    tensors = {"image": image, "encoded": encoded, "latent": latent, "decoded": decoded}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))


def cmd_keys(a, taesd):
    table = {}
    for variant in VARIANTS:
        enc, dec = networks(taesd, variant)
        table[variant] = {
            part: {k: list(v.shape) for k, v in net.state_dict().items()}
            for part, net in (("encoder", enc), ("decoder", dec))
        }
    print(json.dumps(table))


def cmd_random(a, taesd):
    for variant in a.variants:
        out = a.dir / variant
        out.mkdir(exist_ok=True)
        random_reference(taesd, variant, a.seed, out)


def random_reference(taesd, variant, seed, out):
    torch.manual_seed(seed)
    enc, dec = networks(taesd, variant)
    randomize(enc), randomize(dec)
    # The last layer's output centred inside [0, 1], so the final clamp hides little.
    with torch.no_grad():
        dec[-1].weight.mul_(0.4)
        dec[-1].bias.fill_(0.5)
    torch.save(enc.state_dict(), out / "encoder.pth")
    torch.save(dec.state_dict(), out / "decoder.pth")
    image = torch.rand(2, 3, SIDE, SIDE)
    # Large enough that the decoder's soft clamp bends some of it.
    latent = 2 * torch.randn(2, shape_of(taesd, variant)[0], SIDE // 8, SIDE // 8)
    reference(enc, dec, image, latent, out / "reference.safetensors")


def cmd_photos(a, taesd):
    enc, dec = networks(taesd, a.variant)
    enc.load_state_dict(torch.load(a.encoder, map_location="cpu", weights_only=True))
    dec.load_state_dict(torch.load(a.decoder, map_location="cpu", weights_only=True))
    reference(enc, dec, photos(a.photos, a.count), None, a.dir / "reference.safetensors")


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cmd_evil(a, taesd):
    torch.save({"0.weight": Evil(a.marker), "0.bias": torch.zeros(64)}, a.dir / "evil.pth")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--taesd", type=Path, default=ROOT.parent / "shared/models/taef2")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("keys")
    s = sub.add_parser("random")
    s.add_argument("--variants", choices=VARIANTS, nargs="+", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dir", type=Path, required=True)
    s = sub.add_parser("photos")
    s.add_argument("--variant", choices=VARIANTS, required=True)
    s.add_argument("--encoder", type=Path, required=True)
    s.add_argument("--decoder", type=Path, required=True)
    s.add_argument("--photos", type=Path, required=True)
    s.add_argument("--count", type=int, default=3)
    s.add_argument("--dir", type=Path, required=True)
    s = sub.add_parser("evil")
    s.add_argument("--marker", type=Path, required=True)
    s.add_argument("--dir", type=Path, required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    globals()[f"cmd_{a.cmd}"](a, published(a.taesd))


if __name__ == "__main__":
    main()
