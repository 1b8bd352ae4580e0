"""Reference values of pytorch-fid and torch-fidelity (installed by scripts/setup, used as they
are) for tests/fid.rs. No weights are downloaded: pytorch-fid's own network is built with seeded
random weights by intercepting its download, and its batch norms are calibrated on photos.

Sub-commands:
  weights  --photos DIR --seed S --out FILE [--legacy FILE]
           pytorch-fid's `InceptionV3` (its `fid_inception_v3`, download intercepted, torchvision's
           initialisation drawn from seed S), batch-norm statistics calibrated on the photos
           (train-mode forwards with momentum None, so each statistic is the mean over batches),
           saved as torch.save of the Inception3 state_dict (the layout of the published file);
           --legacy also writes it in the pre-1.6 container
  features --weights FILE --images IN.safetensors --out OUT.safetensors
           pytorch-fid's network (the weight file loaded where it would load the published one)
           on `images` (N, 3, H, W) uint8, as /255 like its ToTensor: `features` (N, 2048)
  fid      --a F.safetensors --b F.safetensors   pytorch-fid's calculate_frechet_distance of the
           two `features` sets, their statistics as calculate_activation_statistics makes them
  kid      --a F.safetensors --b F.safetensors   torch-fidelity's KID of the two sets with one
           subset of every feature vector (the sets are equally large)
  evil     --marker FILE --out FILE   a weight file whose pickle would create the marker
"""

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file


def built(state=None, seed=0):
    """pytorch-fid's InceptionV3 (final pool features) and the Inception3 inside it: `state`
    loaded where the published weights would be, or torchvision's random initialisation."""
    import pytorch_fid.inception as fid_inception
    import torchvision

    made = {}

    def intercept(url, progress=True):
        if state is not None:
            return state
        torch.manual_seed(seed)
        fresh = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=True)
        return fresh.state_dict()

    original = fid_inception.fid_inception_v3

    def keep():
        made["inception"] = original()
        return made["inception"]

    fid_inception.load_state_dict_from_url = intercept
    fid_inception.fid_inception_v3 = keep
    try:
        model = fid_inception.InceptionV3([3])
    finally:
        fid_inception.fid_inception_v3 = original
    return model, made["inception"]


def photos(folder, count=64, side=128):
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((side, side), Image.BILINEAR)) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def cmd_weights(a):
    model, inception = built(seed=a.seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    images = photos(a.photos)
    model.train()
    with torch.no_grad():
        for batch in images.split(16):
            model(batch)
    model.eval()
    torch.save(inception.state_dict(), a.out)
    if a.legacy:
        torch.save(inception.state_dict(), a.legacy, _use_new_zipfile_serialization=False)


def cmd_features(a):
    model, _ = built(state=torch.load(a.weights, weights_only=True))
    model.eval()
    images = load_file(a.images)["images"]
    with torch.no_grad():
        out = torch.cat([model(b.float() / 255)[0].squeeze(3).squeeze(2) for b in images.split(25)])
    save_file({"features": out.contiguous()}, a.out)


def cmd_fid(a):
    from pytorch_fid.fid_score import calculate_frechet_distance

    def stats(path):
        act = np.empty((0, 2048))
        act = np.concatenate([act, load_file(path)["features"].numpy()])  # float64, as get_activations fills it
        return np.mean(act, axis=0), np.cov(act, rowvar=False)

    print(repr(float(calculate_frechet_distance(*stats(a.a), *stats(a.b)))))


def cmd_kid(a):
    from torch_fidelity.metric_kid import kid_features_to_metric

    fa, fb = load_file(a.a)["features"], load_file(a.b)["features"]
    out = kid_features_to_metric(fa, fb, kid_subsets=1, kid_subset_size=len(fa), verbose=False)
    print(repr(out["kernel_inception_distance_mean"]))


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cmd_evil(a):
    torch.save({"Conv2d_1a_3x3.conv.weight": Evil(a.marker)}, a.out)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("weights")
    s.add_argument("--photos", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--legacy")
    s = sub.add_parser("features")
    s.add_argument("--weights", required=True)
    s.add_argument("--images", required=True)
    s.add_argument("--out", required=True)
    for name in ("fid", "kid"):
        s = sub.add_parser(name)
        s.add_argument("--a", required=True)
        s.add_argument("--b", required=True)
    s = sub.add_parser("evil")
    s.add_argument("--marker", required=True)
    s.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    globals()["cmd_" + a.cmd](a)


if __name__ == "__main__":
    main()
