"""PyTorch's own scaled_dot_product_attention on the GPU, backend by backend, called the way
the Rust model calls it: q, k, v contiguous (B, H, L, E) with scale 1/sqrt(L), and the
incoming gradient laid out as the model's reshape leaves it ((B, L, H, E) memory viewed as
(B, H, L, E)). Also the usual layout (q, k, v as transposed views). Each backend's output and
gradients are compared with a float64 softmax(q·kᵀ·s)·v on the same inputs; printed as INFO
lines by scripts/gpu_check, to tell a kernel fault from a fault in the Rust code."""
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]


def inputs(b, h, l, e, dtype, layout):
    torch.manual_seed(0)
    if layout == "contiguous":  # what the Rust model passes
        q, k, v = (torch.randn(b, h, l, e, device="cuda") * 0.5 for _ in range(3))
    else:  # the common PyTorch layout: (B, L, H, E) memory, heads transposed forward
        q, k, v = (torch.randn(b, l, h, e, device="cuda").mul(0.5).transpose(1, 2) for _ in range(3))
    grad = torch.randn(b, l, h, e, device="cuda").transpose(1, 2)  # (B, L, H, E) memory
    return [t.to(dtype) for t in (q, k, v)], grad.to(dtype)


def reference(q, k, v, grad, scale):
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = torch.softmax(q @ k.transpose(-2, -1) * scale, -1) @ v
    out.backward(grad.double())
    return out, q.grad, k.grad, v.grad


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def main():
    for l, b in ((64, 16), (4096, 2)):
        for dtype in (torch.float32, torch.bfloat16):
            for layout in ("contiguous", "transposed"):
                (q, k, v), grad = inputs(b, 6, l, 64, dtype, layout)
                scale = l ** -0.5
                want = reference(q, k, v, grad, scale)
                for backend in BACKENDS:
                    qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
                    if layout == "contiguous":
                        qq, kk, vv = (t.contiguous() for t in (qq, kk, vv))
                    try:
                        with sdpa_kernel([backend]):
                            out = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, scale=scale)
                            out.backward(grad)
                        grads = [x.grad for x in (qq, kk, vv)]
                        errs = [rel(out, want[0])] + [rel(g, w) if g is not None else float("nan") for g, w in zip(grads, want[1:])]
                        text = "out {:.1e} dq {:.1e} dk {:.1e} dv {:.1e}".format(*errs)
                    except RuntimeError as err:
                        text = "not available ({})".format(str(err).splitlines()[0][:80])
                    print(f"INFO pytorch sdpa L={l} {str(dtype)[6:]} {layout} {backend.name}: {text}")
                    sys.stdout.flush()


if __name__ == "__main__":
    main()
