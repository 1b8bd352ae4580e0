"""The PyTorch side of scripts/bench_data: a DataLoader over PIL + torchvision, as a PyTorch user
would write it for a folder of photos (ImageFolder's loader: PIL, convert("RGB"); Resize(SIZE,
antialias=True) + CenterCrop(SIZE); PILToTensor, which keeps uint8 as the Rust loader does),
batches of 32, shuffled, WORKERS worker processes. Prints one JSON line: images/s over EPOCHS
epochs, timed from the first batch on, and CPU seconds per decoded image (this process and its
workers, from the loader's creation to the workers' exit).

    bench_data.py FOLDER SIZE WORKERS EPOCHS
"""

import json
import resource
import sys
import time

import torch
from PIL import Image
from torchvision import transforms

from data_reference import images_of

BATCH = 32


class Photos(torch.utils.data.Dataset):
    def __init__(self, folder, size):
        self.paths = images_of(folder)
        self.transform = transforms.Compose(
            [transforms.Resize(size, antialias=True), transforms.CenterCrop(size), transforms.PILToTensor()]
        )

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with open(self.paths[i], "rb") as f:
            image = Image.open(f).convert("RGB")
        return self.transform(image), 0


def cpu_seconds():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main():
    folder, size, workers, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    cpu_start = cpu_seconds()
    data = Photos(folder, size)
    loader = torch.utils.data.DataLoader(
        data, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    images, first = 0, None
    for _ in range(epochs):
        for batch, _labels in loader:
            if first is None:
                first = time.perf_counter()
            else:
                images += len(batch)
    seconds = time.perf_counter() - first
    # Shutting the workers down lets their CPU time count (RUSAGE_CHILDREN counts reaped ones).
    del loader
    cpu = cpu_seconds()
    print(json.dumps({
        "images": images,
        "seconds": seconds,
        "images_per_sec": images / seconds,
        "cpu_seconds_per_image": (cpu - cpu_start) / (epochs * len(data)),
        "workers": workers,
        "len": len(data),
    }))


if __name__ == "__main__":
    main()
