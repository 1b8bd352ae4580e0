"""Seconds per image of pytorch-fid's InceptionV3 (its defaults: resize to 299, final pool
features) on N random 256² images in batches of B, best of R rounds after one warm-up batch;
the weight file is loaded where pytorch-fid loads the published one. Then the seconds of one
calculate_frechet_distance between two sets of N uniform random 2048-feature vectors. For
scripts/bench_fid.

  bench_inception.py WEIGHTS [N] [B] [R]     (BENCH_THREADS sets torch's threads)
"""

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from fid_reference import built  # noqa: E402


def main():
    weights = sys.argv[1]
    n, batch, rounds = (int(sys.argv[i]) if len(sys.argv) > i else d for i, d in ((2, 100), (3, 50), (4, 3)))
    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    model, _ = built(state=torch.load(weights, weights_only=True))
    model.eval()
    torch.manual_seed(0)
    images = torch.randint(256, (n, 3, 256, 256), dtype=torch.uint8)

    def run(count):
        with torch.no_grad():
            for start in range(0, count, batch):
                model(images[start : start + batch].float() / 255)

    run(min(batch, n))
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        run(n)
        best = min(best, (time.perf_counter() - t) / n)
    import numpy as np
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(0)
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (rng.random((n, 2048)), rng.random((n, 2048)))]
    t = time.perf_counter()
    fid = calculate_frechet_distance(*stats[0], *stats[1])
    fid_s = time.perf_counter() - t
    out = {"side": "pytorch-fid", "s_per_image": best, "images": n, "batch": batch, "threads": torch.get_num_threads()}
    print(json.dumps({**out, "fid_s": fid_s, "fid": float(fid)}))


if __name__ == "__main__":
    main()
