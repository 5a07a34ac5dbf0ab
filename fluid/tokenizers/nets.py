"""Convolutional encoder and decoder, SD-VAE style.

Encoder: conv_in, then per resolution level ``num_res_blocks`` residual blocks
(GroupNorm + SiLU + 3x3 conv, twice) and a stride-2 downsampling (none after the last
level), a mid block (residual, self-attention, residual), GroupNorm + SiLU + conv_out.
The decoder mirrors it with one extra residual block per level and nearest-neighbour 2x
upsampling followed by a 3x3 conv.

One departure from SD-VAE, for speed on CPUs: an optional space-to-depth ``stem``. With
``stem=2`` the encoder starts with ``pixel_unshuffle`` (64x64x3 -> 32x32x12) and the decoder
ends with ``pixel_shuffle``, so no 3x3 conv runs at full resolution. At 64x64 that cuts the
encoder's cost several-fold (measured: ~2x-8x more images/s at similar parameter count);
the shapes data has no texture finer than that which the 12-channel stem cannot carry.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        # A 1x1 projection only where the width changes, as SD-VAE's nin_shortcut.
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions of the (small) mid-block grid."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        qkv = qkv.reshape(B, 3, C, H * W).transpose(-1, -2)  # (B, 3, HW, C)
        q, k, v = qkv.unbind(1)  # each (B, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        h = h.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj(h)


class MidBlock(nn.Module):
    def __init__(self, ch: int, groups: int, attention: bool):
        super().__init__()
        self.res1 = ResBlock(ch, ch, groups)
        self.attn = AttnBlock(ch, groups) if attention else nn.Identity()
        self.res2 = ResBlock(ch, ch, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res2(self.attn(self.res1(x)))


class Encoder(nn.Module):
    def __init__(
        self, base: int, mult: tuple[int, ...], num_res: int, out_ch: int, groups: int, attention: bool, stem: int = 1
    ):
        super().__init__()
        widths = [base * m for m in mult]
        self.stem = stem
        self.conv_in = nn.Conv2d(3 * stem * stem, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for _ in range(num_res):
                blocks.append(ResBlock(cin, w, groups))
                cin = w
            if i < len(widths) - 1:
                # Stride-2 conv with SD's asymmetric (0, 1, 0, 1) padding, so H -> H / 2 exactly.
                blocks.append(nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(w, w, 3, stride=2)))
        self.down = nn.Sequential(*blocks)
        self.mid = MidBlock(cin, groups, attention)
        self.norm_out = _norm(cin, groups)
        self.conv_out = nn.Conv2d(cin, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, out_ch, H/f, W/f)
        if self.stem > 1:
            x = F.pixel_unshuffle(x, self.stem)  # (B, 3*s*s, H/s, W/s)
        h = self.down(self.conv_in(x))
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(
        self, base: int, mult: tuple[int, ...], num_res: int, in_ch: int, groups: int, attention: bool, stem: int = 1
    ):
        super().__init__()
        self.stem = stem
        widths = [base * m for m in mult]
        cin = widths[-1]
        self.conv_in = nn.Conv2d(in_ch, cin, 3, padding=1)
        self.mid = MidBlock(cin, groups, attention)
        blocks: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            for _ in range(num_res + 1):
                blocks.append(ResBlock(cin, widths[i], groups))
                cin = widths[i]
            if i > 0:
                blocks.append(Upsample(cin))
        self.up = nn.Sequential(*blocks)
        self.norm_out = _norm(cin, groups)
        self.conv_out = nn.Conv2d(cin, 3 * stem * stem, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, in_ch, h, w) -> (B, 3, h*f, w*f)
        h = self.mid(self.conv_in(z))
        h = self.up(h)
        out = self.conv_out(F.silu(self.norm_out(h)))  # (B, 3*s*s, H/s, W/s)
        return F.pixel_shuffle(out, self.stem) if self.stem > 1 else out  # (B, 3, H, W)
