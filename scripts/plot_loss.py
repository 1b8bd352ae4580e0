"""Draws the Loss/batch curve of a TensorBoard log folder into a PNG (no plotting library:
a small rasteriser, so the venv needs nothing beyond tensorboard). Used for assets/.

    .venv/bin/python scripts/plot_loss.py runs/quickstart assets/quickstart_loss.png"""

import struct
import sys
import zlib

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

W, H, MARGIN = 640, 320, 40


def write_png(path, pixels):
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    logdir, out = sys.argv[1], sys.argv[2]
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    points = [(e.step, e.value) for e in acc.Scalars("Loss/batch")]
    # A running mean over 50 steps, as TensorBoard's smoothing would show.
    smooth, total = [], 0.0
    for i, (_, v) in enumerate(points):
        total += v
        if i >= 50:
            total -= points[i - 50][1]
        smooth.append(total / min(i + 1, 50))
    pixels = [bytearray([255] * W * 3) for _ in range(H)]

    def put(x, y, rgb):
        if 0 <= x < W and 0 <= y < H:
            pixels[y][3 * x:3 * x + 3] = bytes(rgb)

    max_step, top = points[-1][0], max(v for _, v in points)
    to_xy = lambda s, v: (MARGIN + int((W - 2 * MARGIN) * s / max_step), H - MARGIN - int((H - 2 * MARGIN) * v / top))
    for x in range(MARGIN, W - MARGIN):  # axes
        put(x, H - MARGIN, (0, 0, 0))
    for y in range(MARGIN, H - MARGIN + 1):
        put(MARGIN, y, (0, 0, 0))
    for frac in (0.25, 0.5, 0.75, 1.0):  # gridlines at quarters of the top value
        y = to_xy(0, top * frac)[1]
        for x in range(MARGIN, W - MARGIN, 4):
            put(x, y, (200, 200, 200))
    for (s, v) in points:
        put(*to_xy(s, v), (170, 190, 230))
    prev = None
    for (s, _), v in zip(points, smooth):
        xy = to_xy(s, v)
        if prev:
            n = max(abs(xy[0] - prev[0]), abs(xy[1] - prev[1]), 1)
            for k in range(n + 1):
                put(prev[0] + (xy[0] - prev[0]) * k // n, prev[1] + (xy[1] - prev[1]) * k // n, (200, 30, 30))
        prev = xy
    write_png(out, pixels)
    print(f"{out}: {len(points)} steps, loss {points[0][1]:.3f} -> {smooth[-1]:.3f} (50-step mean); y axis 0..{top:.2f}")


if __name__ == "__main__":
    main()
