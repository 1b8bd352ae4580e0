"""The PyTorch side of the data pipeline's tests and benchmark: what torchvision makes of a folder
of photos, and camera-size photos made from smaller ones.

  resize FOLDER SIZE OUT   torchvision's Resize(SIZE, antialias=True) + CenterCrop(SIZE) of every
                           image of FOLDER (sorted by name, opened as ImageFolder's loader does:
                           PIL, convert("RGB")), saved to the safetensors file OUT as `images`,
                           uint8 (N, SIZE, SIZE, 3).
  pil FOLDER SIZE OUT      the same for files PIL may refuse (damaged JPEGs): `images` holds zeros
                           where PIL raised, and `loaded` (uint8, N) says which it loaded.
  large FOLDER OUT COUNT   COUNT 4000×3000 JPEGs (every third one 3000×4000) in the folder OUT,
                           each a photo of FOLDER upscaled with fine noise added, so that it
                           carries as much detail per pixel as a camera's (quality 90, baseline).
"""

import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def images_of(folder):
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
    return [os.path.join(folder, n) for n in names]


def cmd_resize(folder, size, out):
    transform = transforms.Compose([transforms.Resize(size, antialias=True), transforms.CenterCrop(size)])
    images = []
    for path in images_of(folder):
        with Image.open(path) as image:
            square = transform(image.convert("RGB"))
        images.append(torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()))
    save_file({"images": torch.stack(images)}, out)


def cmd_pil(folder, size, out):
    transform = transforms.Compose([transforms.Resize(size, antialias=True), transforms.CenterCrop(size)])
    images, loaded = [], []
    for path in images_of(folder):
        try:
            with Image.open(path) as image:
                square = np.asarray(transform(image.convert("RGB")), dtype=np.uint8).copy()
            loaded.append(1)
        except OSError:
            square = np.zeros((size, size, 3), dtype=np.uint8)
            loaded.append(0)
        images.append(torch.from_numpy(square))
    save_file({"images": torch.stack(images), "loaded": torch.tensor(loaded, dtype=torch.uint8)}, out)


def cmd_large(folder, out, count):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    sources = images_of(folder)
    for k in range(count):
        size = (3000, 4000) if k % 3 == 2 else (4000, 3000)
        with Image.open(sources[k % len(sources)]) as image:
            big = np.asarray(image.convert("RGB").resize(size, Image.BICUBIC), dtype=np.int16)
        big = big + rng.integers(-6, 7, size=big.shape, dtype=np.int16)
        Image.fromarray(big.clip(0, 255).astype(np.uint8)).save(os.path.join(out, f"camera_{k:03d}.jpg"), quality=90)


def main():
    what, args = sys.argv[1], sys.argv[2:]
    if what == "resize":
        cmd_resize(args[0], int(args[1]), args[2])
    elif what == "pil":
        cmd_pil(args[0], int(args[1]), args[2])
    elif what == "large":
        cmd_large(args[0], args[1], int(args[2]))
    else:
        sys.exit(f"unknown command {what!r}: expected resize, pil or large")


if __name__ == "__main__":
    main()
