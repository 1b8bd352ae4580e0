"""The project's own PyTorch reference of the original DiT trainer, written from
docs/ORIGINAL.md (the project's specification of the original). The Rust port is tested against it:
same parameter names and shapes, same forward pass with its quirks, same DDPM math and
random-number order. Keep it plain PyTorch, as the original is."""

import math

import torch
from torch import nn

TIME_FEATURES = 256


class TimeEmbedding(nn.Module):
    def __init__(self, emb_size):
        super().__init__()
        half = TIME_FEATURES // 2
        # f_i = exp(i * (-ln 10000 / half)) in float32; a plain attribute, not a buffer
        self.freqs = torch.exp(torch.arange(half) * (-math.log(10000) / half))
        self.mlp = nn.Sequential(
            nn.Linear(TIME_FEATURES, emb_size), nn.ReLU(), nn.Linear(emb_size, emb_size)
        )

    def forward(self, t):
        angles = t.unsqueeze(-1) * self.freqs.to(t.device).unsqueeze(0)
        feats = torch.cat([angles.cos(), angles.sin()], dim=-1)  # cosine first
        return self.mlp(feats)


class DiTBlock(nn.Module):
    def __init__(self, emb_size, head, attention="naive"):
        super().__init__()
        self.emb_size, self.head, self.attention = emb_size, head, attention
        e, he = emb_size, head * emb_size
        self.gama_emb_1 = nn.Linear(e, e)
        self.beita_emb_1 = nn.Linear(e, e)
        self.alfa_emb_1 = nn.Linear(e, e)
        self.gama_emb_2 = nn.Linear(e, e)
        self.beita_emb_2 = nn.Linear(e, e)
        self.alfa_emb_2 = nn.Linear(e, e)
        self.ln_1 = nn.LayerNorm(e)
        self.q_emb = nn.Linear(e, he)
        self.k_emb = nn.Linear(e, he)
        self.v_emb = nn.Linear(e, he)
        self.linear_back = nn.Linear(he, e)
        self.ln_2 = nn.LayerNorm(e)
        self.feed_forward = nn.Sequential(nn.Linear(e, 4 * e), nn.ReLU(), nn.Linear(4 * e, e))

    def forward(self, x, cond):
        b, l, e, h = x.size(0), x.size(1), self.emb_size, self.head
        g1 = self.gama_emb_1(cond).unsqueeze(1)
        b1 = self.beita_emb_1(cond).unsqueeze(1)
        a1 = self.alfa_emb_1(cond).unsqueeze(1)
        g2 = self.gama_emb_2(cond).unsqueeze(1)
        b2 = self.beita_emb_2(cond).unsqueeze(1)
        a2 = self.alfa_emb_2(cond).unsqueeze(1)

        u = self.ln_1(x) * (1 + g1) + b1
        q = self.q_emb(u).view(b, l, h, e).permute(0, 2, 1, 3)
        k = self.k_emb(u).view(b, l, h, e).permute(0, 2, 1, 3)
        v = self.v_emb(u).view(b, l, h, e).permute(0, 2, 1, 3)
        if self.attention == "naive":
            # the original divides by q.size(2), which is L after the heads moved forward
            scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(2))
            o = torch.matmul(torch.softmax(scores, dim=-1), v)
        else:
            o = nn.functional.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(l))
        o = o.permute(0, 2, 1, 3).reshape(b, l, h * e)
        x1 = x + a1 * self.linear_back(o)

        w = self.ln_2(x1) * (1 + g2) + b2
        return x1 + a2 * self.feed_forward(w)


class DIT(nn.Module):
    def __init__(self, img_size=256, patch_size=4, channel=3, dit_num=3, head=6,
                 label_num=1, emb_size=64, attention="naive"):
        super().__init__()
        self.patch_count = img_size // patch_size
        self.patch_size, self.channel = patch_size, channel
        patch_dim = channel * patch_size ** 2
        self.conv = nn.Conv2d(channel, patch_dim, kernel_size=patch_size, stride=patch_size)
        self.patch_emb = nn.Linear(patch_dim, emb_size)
        self.position_emb = nn.Parameter(torch.rand(1, self.patch_count ** 2, emb_size))
        self.time_emb = nn.Sequential(
            TimeEmbedding(emb_size), nn.Linear(emb_size, emb_size), nn.ReLU(),
            nn.Linear(emb_size, emb_size),
        )
        self.label_emb = nn.Embedding(label_num, emb_size)
        self.model_list = nn.ModuleList(
            [DiTBlock(emb_size, head, attention) for _ in range(dit_num)]
        )
        self.ln = nn.LayerNorm(emb_size)
        self.linear = nn.Linear(emb_size, patch_dim)

    def forward(self, x, y, t):
        cond = self.label_emb(y) + self.time_emb(t)
        x = self.conv(x)
        x = x.permute(0, 2, 3, 1)
        x = x.reshape(x.size(0), self.patch_count * self.patch_count, x.size(3))
        x = self.patch_emb(x) + self.position_emb
        for block in self.model_list:
            x = block(x, cond)
        x = self.linear(self.ln(x))
        p, c, pc = self.patch_size, self.channel, self.patch_count
        x = x.view(x.size(0), pc, pc, p, p, c)  # channel fastest
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, P, p, P, p)
        return x.reshape(x.size(0), c, pc * p, pc * p)


class Diffusion:
    """The DDPM tables and steps of docs/ORIGINAL.md §4."""

    def __init__(self, max_t=1000, beta_start=0.0001, beta_end=0.02):
        self.max_t = max_t
        self.betas = torch.linspace(beta_start, beta_end, max_t)
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=-1)
        self.alphas_cumprod_prev = torch.cat((torch.tensor([1.0]), self.alphas_cumprod[:-1]))
        self.variance = (1 - self.alphas) * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)

    def add_noise(self, x, t):
        noise = torch.randn_like(x)
        ac = self.alphas_cumprod[t].view(x.size(0), 1, 1, 1)
        return torch.sqrt(ac) * x + torch.sqrt(1 - ac) * noise, noise

    @torch.no_grad()
    def denoise(self, model, x, y, clamp=True):
        """Ancestral sampling from the noise x; returns all T + 1 states, the noise first. The
        original clamps x to [-1, 1] every step; `clamp=False` leaves that out (latent space)."""
        model.eval()
        steps = [x.clone()]
        for s in range(self.max_t - 1, -1, -1):
            t = torch.full((x.size(0),), s, dtype=torch.long)
            eps = model(x, y, t)
            a, ab = self.alphas[s], self.alphas_cumprod[s]
            mean = (x - (1 - a) / torch.sqrt(1 - ab) * eps) / torch.sqrt(a)
            x = mean + torch.randn_like(x) * torch.sqrt(self.variance[s]) if s != 0 else mean
            x = (torch.clamp(x, -1.0, 1.0) if clamp else x).detach()
            steps.append(x)
        return steps


def build(model_cfg, attention=None):
    """A DIT from the `model` section of the project's config.json."""
    keys = ("img_size", "patch_size", "channel", "dit_num", "head", "label_num", "emb_size")
    kwargs = {k: model_cfg[k] for k in keys if k in model_cfg}
    return DIT(**kwargs, attention=attention or "naive")


def load_state_dict_any(path):
    """Reads .pth/.pt (torch.load with its defaults), .ot (TorchScript archive) or .safetensors."""
    path = str(path)
    if path.endswith(".ot"):
        sd = torch.jit.load(path).state_dict()
        return {k.replace("|", "."): v for k, v in sd.items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path)
