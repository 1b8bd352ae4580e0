"""Draws the Loss/batch curve of a TensorBoard log folder into a PNG with labelled axes (step,
loss) and tick values; the raw losses in light blue, their 50-step running mean in red.
Used for assets/.

    .venv/bin/python scripts/plot_loss.py runs/quickstart assets/quickstart_loss.png [TITLE]"""

import sys

from PIL import Image, ImageDraw
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

W, H = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 48


def main():
    logdir, out = sys.argv[1], sys.argv[2]
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    points = [(e.step, e.value) for e in acc.Scalars("Loss/batch")]
    smooth, total = [], 0.0  # a running mean over 50 steps, as TensorBoard's smoothing shows
    for i, (_, v) in enumerate(points):
        total += v - (points[i - 50][1] if i >= 50 else 0.0)
        smooth.append(total / min(i + 1, 50))
    max_step, top = max(points[-1][0], 1), max(v for _, v in points)
    top = (int(top * 4) + 1) / 4  # round up to a quarter
    img = Image.new("RGB", (W, H), "white")
    g = ImageDraw.Draw(img)
    x_of = lambda s: LEFT + (W - LEFT - RIGHT) * s / max_step
    y_of = lambda v: H - BOTTOM - (H - TOP - BOTTOM) * v / top
    for k in range(5):  # loss ticks and gridlines
        v = top * k / 4
        g.line([(LEFT, y_of(v)), (W - RIGHT, y_of(v))], fill=(225, 225, 225))
        g.text((LEFT - 8, y_of(v)), f"{v:.2f}", fill="black", anchor="rm")
    for k in range(5):  # step ticks
        s = round(max_step * k / 4)
        g.line([(x_of(s), H - BOTTOM), (x_of(s), H - BOTTOM + 4)], fill="black")
        g.text((x_of(s), H - BOTTOM + 8), str(s), fill="black", anchor="mt")
    g.line([(LEFT, TOP), (LEFT, H - BOTTOM), (W - RIGHT, H - BOTTOM)], fill="black")
    g.point([(x_of(s), y_of(v)) for s, v in points], fill=(170, 190, 230))
    g.line([(x_of(s), y_of(v)) for (s, _), v in zip(points, smooth)], fill=(200, 30, 30), width=2)
    g.text(((LEFT + W - RIGHT) / 2, H - 14), "training step", fill="black", anchor="mm")
    title = sys.argv[3] if len(sys.argv) > 3 else "Loss/batch"
    g.text((LEFT, 12), f"{title}; red: 50-step mean", fill="black", anchor="lm")
    img.save(out)
    print(f"{out}: {len(points)} steps, loss {points[0][1]:.3f} -> {smooth[-1]:.3f} (50-step mean); y axis 0..{top:.2f}")


if __name__ == "__main__":
    main()
