"""The DDPM UNet of pytorch-ddpm with CBDM's label and augmentation embeddings.

Parameter names and shapes follow the public implementation exactly (see
`../shared/spec/unet_state_dict.tsv`), so its checkpoints load with `strict=True`.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

AUGM_DIM = 9


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class TimeEmbedding(nn.Module):
    """Fixed sinusoidal table (T x d_model, stored as a frozen embedding) followed by an MLP."""

    def __init__(self, T, d_model, dim):
        assert d_model % 2 == 0
        super().__init__()
        freqs = torch.exp(-torch.arange(0, d_model, step=2) / d_model * math.log(10000))
        angles = torch.arange(T).float()[:, None] * freqs[None, :]
        table = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).view(T, d_model)
        self.timembedding = nn.Sequential(
            nn.Embedding.from_pretrained(table),
            nn.Linear(d_model, dim),
            Swish(),
            nn.Linear(dim, dim),
        )
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init.xavier_uniform_(module.weight)
                init.zeros_(module.bias)

    def forward(self, t):
        return self.timembedding(t)


class DownSample(nn.Module):
    def __init__(self, in_ch):
        super().__init__()
        self.main = nn.Conv2d(in_ch, in_ch, 3, stride=2, padding=1)
        init.xavier_uniform_(self.main.weight)
        init.zeros_(self.main.bias)

    def forward(self, x, temb):
        return self.main(x)


class UpSample(nn.Module):
    def __init__(self, in_ch):
        super().__init__()
        self.main = nn.Conv2d(in_ch, in_ch, 3, stride=1, padding=1)
        init.xavier_uniform_(self.main.weight)
        init.zeros_(self.main.bias)

    def forward(self, x, temb):
        return self.main(F.interpolate(x, scale_factor=2, mode='nearest'))


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection.

    `use_sdpa` selects torch's fused `scaled_dot_product_attention`; False gives the explicit
    softmax(q k^T / sqrt(C)) v of the reference. Both use the same parameters.
    """

    def __init__(self, in_ch, use_sdpa=True):
        super().__init__()
        self.use_sdpa = use_sdpa
        self.group_norm = nn.GroupNorm(32, in_ch)
        self.proj_q = nn.Conv2d(in_ch, in_ch, 1, stride=1, padding=0)
        self.proj_k = nn.Conv2d(in_ch, in_ch, 1, stride=1, padding=0)
        self.proj_v = nn.Conv2d(in_ch, in_ch, 1, stride=1, padding=0)
        self.proj = nn.Conv2d(in_ch, in_ch, 1, stride=1, padding=0)
        for module in [self.proj_q, self.proj_k, self.proj_v, self.proj]:
            init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)
        init.xavier_uniform_(self.proj.weight, gain=1e-5)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.group_norm(x)
        q = self.proj_q(h).flatten(2).transpose(1, 2)  # B x HW x C
        k = self.proj_k(h).flatten(2).transpose(1, 2)
        v = self.proj_v(h).flatten(2).transpose(1, 2)
        if self.use_sdpa:
            h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        else:
            w = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * (C ** -0.5), dim=-1)
            h = torch.bmm(w, v)
        h = h.transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj(h)


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, tdim, dropout, attn=False):
        super().__init__()
        self.block1 = nn.Sequential(
            nn.GroupNorm(32, in_ch),
            Swish(),
            nn.Conv2d(in_ch, out_ch, 3, stride=1, padding=1),
        )
        self.temb_proj = nn.Sequential(
            Swish(),
            nn.Linear(tdim, out_ch),
        )
        self.block2 = nn.Sequential(
            nn.GroupNorm(32, out_ch),
            Swish(),
            nn.Dropout(dropout),
            nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1),
        )
        if in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=1, padding=0)
        else:
            self.shortcut = nn.Identity()
        self.attn = AttnBlock(out_ch) if attn else nn.Identity()
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                init.xavier_uniform_(module.weight)
                init.zeros_(module.bias)
        # the loop above also re-initialised the attention block's own layers, its output
        # projection included (gain 1, not AttnBlock's 1e-5): as in the public code, whose
        # runs produced the published numbers (spec: "Model")
        init.xavier_uniform_(self.block2[-1].weight, gain=1e-5)

    def forward(self, x, temb):
        h = self.block1(x)
        h = h + self.temb_proj(temb)[:, :, None, None]
        h = self.block2(h)
        h = h + self.shortcut(x)
        return self.attn(h)


def check_config(ch, ch_mult, attn, img_size=None):
    """Return a message saying why (ch, ch_mult, attn, img_size) cannot build a UNet, or None."""
    if ch <= 0 or ch % 32:
        return f'--ch {ch}: must be a positive multiple of 32 (GroupNorm uses 32 groups)'
    if not ch_mult:
        return '--ch_mult is empty: give at least one level, e.g. --ch_mult 1 --ch_mult 2'
    bad = [i for i in attn if not 0 <= i < len(ch_mult)]
    if bad:
        return f'--attn {bad}: level index out of range for {len(ch_mult)} levels in --ch_mult'
    if img_size is not None:
        factor = 2 ** (len(ch_mult) - 1)
        if img_size <= 0 or img_size % factor:
            return (f'--img_size {img_size}: must be a multiple of {factor} for '
                    f'{len(ch_mult)} levels in --ch_mult')
    return None


class UNet(nn.Module):
    """eps-prediction UNet.

    Args:
        T: number of diffusion steps (rows of the time-embedding table).
        ch, ch_mult, attn, num_res_blocks, dropout: the pytorch-ddpm architecture.
        cond: add a label embedding (`num_class` x 4ch) to the time embedding.
        augm: add a bias-free Linear(9, 4ch) embedding of the augmentation vector.
    Forward:
        x: B x 3 x H x W, t: B (int64 in [0, T)), y: B int64 or None. Entries of y that are
        negative mean "no label" for that sample, as y=None does for the whole batch.
        augm: B x 9 or None (None = no augmentation, the same as zeros).
        Returns eps_hat: B x 3 x H x W.
    """

    def __init__(self, T, ch, ch_mult, attn, num_res_blocks, dropout, cond=False, augm=False,
                 num_class=10):
        super().__init__()
        problem = check_config(ch, ch_mult, attn)
        if problem:
            raise ValueError(problem)
        tdim = ch * 4
        self.time_embedding = TimeEmbedding(T, ch, tdim)
        if cond:
            self.label_embedding = nn.Embedding(num_class, tdim)
        if augm:
            # nn.Linear's default init (kaiming-uniform, bound 1 / sqrt(9)), as the public code
            self.augm_embedding = nn.Linear(AUGM_DIM, tdim, bias=False)
        self.cond, self.augm, self.num_class = cond, augm, num_class

        self.head = nn.Conv2d(3, ch, kernel_size=3, stride=1, padding=1)
        self.downblocks = nn.ModuleList()
        chs = [ch]  # output channels of every down block, consumed by the skip connections
        now_ch = ch
        for i, mult in enumerate(ch_mult):
            out_ch = ch * mult
            for _ in range(num_res_blocks):
                self.downblocks.append(ResBlock(now_ch, out_ch, tdim, dropout, attn=(i in attn)))
                now_ch = out_ch
                chs.append(now_ch)
            if i != len(ch_mult) - 1:
                self.downblocks.append(DownSample(now_ch))
                chs.append(now_ch)

        self.middleblocks = nn.ModuleList([
            ResBlock(now_ch, now_ch, tdim, dropout, attn=True),
            ResBlock(now_ch, now_ch, tdim, dropout, attn=False),
        ])

        self.upblocks = nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            out_ch = ch * mult
            for _ in range(num_res_blocks + 1):
                self.upblocks.append(ResBlock(chs.pop() + now_ch, out_ch, tdim, dropout,
                                              attn=(i in attn)))
                now_ch = out_ch
            if i != 0:
                self.upblocks.append(UpSample(now_ch))
        assert not chs

        self.tail = nn.Sequential(
            nn.GroupNorm(32, now_ch),
            Swish(),
            nn.Conv2d(now_ch, 3, 3, stride=1, padding=1),
        )
        init.xavier_uniform_(self.head.weight)
        init.zeros_(self.head.bias)
        init.xavier_uniform_(self.tail[-1].weight, gain=1e-5)
        init.zeros_(self.tail[-1].bias)

    def set_sdpa(self, enabled):
        """Switch every attention block between the fused and the explicit softmax form."""
        for module in self.modules():
            if isinstance(module, AttnBlock):
                module.use_sdpa = enabled

    def embed(self, t, y=None, augm=None):
        """Time (+ label, + augmentation) embedding: B x 4ch."""
        temb = self.time_embedding(t)
        if y is not None and self.cond:
            has_label = (y >= 0)
            label_emb = self.label_embedding(y.clamp(min=0))
            temb = temb + label_emb * has_label[:, None].to(label_emb.dtype)
        if augm is not None and self.augm:
            temb = temb + self.augm_embedding(augm.to(temb.dtype))
        return temb

    def forward(self, x, t, y=None, augm=None):
        temb = self.embed(t, y, augm)
        h = self.head(x)
        hs = [h]
        for layer in self.downblocks:
            h = layer(h, temb)
            hs.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            if isinstance(layer, ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = layer(h, temb)
        assert not hs
        return self.tail(h)
