"""Two Chrome traces of libtorch's operator profiler (this project's `BENCH_PROFILE`, PyTorch's
`torch.profiler` export) side by side: per operator, its self time (its own time less that of
the operators it called) and calls, each divided by the steps the trace covers; the operators
with the largest difference first. Numbers only, not a test.

  profile_ops.py RUST_TRACE PYTORCH_TRACE STEPS [ROWS]
"""
import collections, json, sys


def self_times(path):
    """name -> [self microseconds, calls] over the trace's CPU operators."""
    events = json.load(open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    ops = [e for e in events if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    out = collections.defaultdict(lambda: [0.0, 0])
    by_thread = collections.defaultdict(list)
    for e in ops:
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [end, name, child time]
        def close(until):
            while stack and stack[-1][0] <= until:
                end, name, child, dur = stack.pop()
                out[name][0] += dur - child
                out[name][1] += 1
                if stack:
                    stack[-1][2] += dur
        for e in evs:
            close(e["ts"])
            stack.append([e["ts"] + e["dur"], e["name"], 0.0, e["dur"]])
        close(float("inf"))
    return out


rust, torch_, steps = self_times(sys.argv[1]), self_times(sys.argv[2]), float(sys.argv[3])
rows = int(sys.argv[4]) if len(sys.argv) > 4 else 30
names = set(rust) | set(torch_)
total = lambda d: sum(v[0] for v in d.values()) / steps / 1e3
print(f"self time a step: rust {total(rust):.1f} ms, pytorch {total(torch_):.1f} ms (profiled, so slower than unprofiled)")
print(f"{'operator':<58} {'rust ms':>9} {'calls':>6} {'torch ms':>9} {'calls':>6} {'diff ms':>8}")
diff = lambda n: (rust.get(n, [0, 0])[0] - torch_.get(n, [0, 0])[0]) / steps / 1e3
for n in sorted(names, key=lambda n: -abs(diff(n)))[:rows]:
    r, t = rust.get(n, [0, 0]), torch_.get(n, [0, 0])
    print(f"{n[:58]:<58} {r[0] / steps / 1e3:9.2f} {r[1] / steps:6.0f} {t[0] / steps / 1e3:9.2f} {t[1] / steps:6.0f} {diff(n):+8.2f}")
