"""NeRV, the video neural representation PFNR builds on (spec ``pfnr_senn.md`` A2), and the Fourier
subneural operator (FSO, A4) that can replace or join one of its upsampling blocks.

``NeRV(coords)`` maps ``coords = (frame position, session position)`` in [0, 1) (shape ``(B, 2)``)
to features ``(B, C, H, W)``: each position goes through NeRV's positional encoding
``[sin(b^i pi p), cos(b^i pi p)]_{i<L}`` and the two encodings are concatenated (PFNR's session
input), then a bias-free ReLU MLP stem makes a ``fc_dim x h x w`` grid and the blocks
``Conv3x3 -> PixelShuffle(s) -> SiLU`` upsample it by ``prod(strides)``. The output heads (one per
session) belong to the strategy. Every weight tensor is plain (no mask inside): masking is done by
the strategy with ``torch.func.functional_call``, so the same module is also the dense NeRV.

Named sizes run from ``xs`` (CPU tests and the built-in videos) to ``paper`` (the PFNR scripts:
``fc_hw 9x16x112``, stem 512, lower width 96, strides 5 2 2 2 2 for 720x1280 targets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clplat.backbones.build import BACKBONES
from clplat.errors import UserError

FsoMode = Literal["replace", "sum"]
Placement = Literal["centred", "official"]


@dataclass(frozen=True)
class NervSize:
    stem_dim: int
    fc_dim: int
    lower_width: int
    strides: tuple[int, ...]
    pe_levels: int = 40
    pe_base: float = 1.25


SIZES = {
    "xs": NervSize(stem_dim=64, fc_dim=48, lower_width=16, strides=(2, 2, 2, 2)),
    "s": NervSize(stem_dim=128, fc_dim=64, lower_width=32, strides=(2, 2, 2, 2)),
    "m": NervSize(stem_dim=256, fc_dim=96, lower_width=48, strides=(2, 2, 2, 2, 2)),
    "paper": NervSize(stem_dim=512, fc_dim=112, lower_width=96, strides=(5, 2, 2, 2, 2)),
}


def positional_encoding(p: Tensor, levels: int, base: float) -> Tensor:
    """NeRV's encoding of positions ``p (B,)`` in [0, 1): ``(B, 2 * levels)``, sin/cos interleaved."""
    freqs = base ** torch.arange(levels, dtype=p.dtype, device=p.device) * math.pi
    angles = p[:, None] * freqs[None]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)


class SpectralUp(nn.Module):
    """FSO: ``F^-1(R . F(v))`` with a per-frequency complex channel mixing ``R = W_re + i W_im``,
    upsampling by ``stride`` in the frequency domain (output grid ``stride`` times larger).

    The rfft2 (``norm='forward'``) of the input keeps rows ``[0, m1)`` (non-negative row
    frequencies) and ``[h - m1, h)`` (negative ones, -m1..-1) over columns ``[0, m2)``; each block
    has its own weights (index 0 and 1 of ``w_re``/``w_im``). ``placement='centred'`` writes the
    negative rows to the END of the larger output grid, so they stay negative frequencies and an
    identity ``R`` is band-limited interpolation. ``placement='official'`` reproduces the released
    code (output spectrum at the input's size, then ``irfftn(s=...)`` zero-pads at the end): the
    negative block lands on high positive frequencies (spec A4.5, pitfall 4).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, in_hw: tuple[int, int],
                 modes: tuple[int, int] | None = None, placement: Placement = "centred") -> None:
        super().__init__()
        h, w = in_hw
        m1, m2 = modes or (max(1, h // 2), max(1, w // 2))
        if not (1 <= m1 <= h // 2 or (h == 1 and m1 == 1)) or not 1 <= m2 <= w // 2 + 1:
            raise UserError(f"backbone: FSO modes ({m1}, {m2}) do not fit a {h}x{w} input "
                            f"(need 1 <= m1 <= {h // 2}, 1 <= m2 <= {w // 2 + 1})")
        self.c_in, self.c_out, self.stride, self.in_hw = c_in, c_out, stride, (h, w)
        self.modes, self.placement = (m1, m2), placement
        self.w_re = nn.Parameter(torch.empty(2, c_in, c_out, m1, m2))
        self.w_im = nn.Parameter(torch.empty(2, c_in, c_out, m1, m2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = math.sqrt(2.0 / (self.c_in + self.c_out))
        with torch.no_grad():
            self.w_re.normal_(0.0, std)
            self.w_im.normal_(0.0, std)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        s, (m1, m2) = self.stride, self.modes
        hh, ww = h * s, w * s
        spec = torch.fft.rfft2(x, norm="forward")
        weight = torch.complex(self.w_re, self.w_im)
        out = spec.new_zeros(b, self.c_out, hh, ww // 2 + 1)
        out[:, :, :m1, :m2] = torch.einsum("bixy,ioxy->boxy", spec[:, :, :m1, :m2], weight[0])
        neg = torch.einsum("bixy,ioxy->boxy", spec[:, :, h - m1:, :m2], weight[1])
        if self.placement == "centred" or h == 1:
            out[:, :, hh - m1:, :m2] = neg
        else:
            out[:, :, h - m1:h, :m2] = neg
        return torch.fft.irfft2(out, s=(hh, ww), norm="forward")


class NervBlock(nn.Module):
    """``Conv3x3 -> PixelShuffle(s)`` (``conv``), the FSO alone (``replace``) or both summed
    (``sum``), then SiLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, in_hw: tuple[int, int],
                 fso: FsoMode | None = None, fso_modes: tuple[int, int] | None = None,
                 placement: Placement = "centred") -> None:
        super().__init__()
        self.conv = None if fso == "replace" else nn.Conv2d(c_in, c_out * stride * stride, 3, padding=1, bias=False)
        self.fso = None if fso is None else SpectralUp(c_in, c_out, stride, in_hw, fso_modes, placement)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        y = None if self.conv is None else F.pixel_shuffle(self.conv(x), self.stride)
        if self.fso is not None:
            y = self.fso(x) if y is None else y + self.fso(x)
        return F.silu(y)


class NeRV(nn.Module):
    """The NeRV body: ``coords (B, 2) -> features (B, num_features, H, W)`` (see the module doc)."""

    def __init__(self, out_hw: tuple[int, int], size: NervSize, fso_block: int | None = None,
                 fso_mode: FsoMode = "sum", fso_modes: tuple[int, int] | None = None,
                 placement: Placement = "centred") -> None:
        super().__init__()
        up = math.prod(size.strides)
        h, w = out_hw
        if h % up or w % up:
            raise UserError(f"data.size {h}x{w} cannot be reached by the NeRV strides {list(size.strides)} "
                            f"(height and width must be multiples of {up})")
        if fso_block is not None and not 0 <= fso_block < len(size.strides):
            raise UserError(f"fso_block {fso_block} is not a block index (0..{len(size.strides) - 1})")
        self.size, self.out_hw = size, (h, w)
        self.grid = (h // up, w // up)
        self.stem = nn.Sequential(nn.Linear(4 * size.pe_levels, size.stem_dim, bias=False), nn.ReLU(),
                                  nn.Linear(size.stem_dim, size.fc_dim * self.grid[0] * self.grid[1], bias=False),
                                  nn.ReLU())
        blocks, c, hw = [], size.fc_dim, self.grid
        for i, s in enumerate(size.strides):
            c_out = size.fc_dim if i == 0 else max(c // 2, size.lower_width)
            blocks.append(NervBlock(c, c_out, s, hw, fso_mode if i == fso_block else None, fso_modes, placement))
            c, hw = c_out, (hw[0] * s, hw[1] * s)
        self.blocks = nn.ModuleList(blocks)
        self.num_features = c

    def forward(self, coords: Tensor) -> Tensor:
        pe = [positional_encoding(coords[:, k], self.size.pe_levels, self.size.pe_base) for k in range(2)]
        x = self.stem(torch.cat(pe, dim=1)).view(-1, self.size.fc_dim, *self.grid)
        for block in self.blocks:
            x = block(x)
        return x

    def subnet_tensors(self) -> dict[str, bool]:
        """Names of the weight tensors a subnetwork masks -> whether their scores rank by ``|s|``
        (linear/conv) or by ``s`` itself (the spectral weights, as in the released code)."""
        return {n: not n.endswith(("w_re", "w_im")) for n, _ in self.named_parameters()}


@BACKBONES.register("nerv")
def _nerv(input_shape: tuple[int, ...], size: str = "xs", fso_block: int | None = None,
          fso_mode: FsoMode = "sum", fso_modes: list[int] | None = None, placement: Placement = "centred",
          strides: list[int] | None = None, stem_dim: int | None = None, fc_dim: int | None = None) -> NeRV:
    """``backbone.name: nerv``; ``input_shape`` = (3, H, W) of the frames. Named ``size`` with
    optional overrides of its strides and widths."""
    if size not in SIZES:
        raise UserError(f"backbone.kwargs.size: unknown NeRV size '{size}' (known: {', '.join(SIZES)})")
    if fso_mode not in ("replace", "sum") or placement not in ("centred", "official"):
        raise UserError("backbone.kwargs: fso_mode must be replace|sum and placement centred|official")
    spec = SIZES[size]
    over = {k: v for k, v in (("strides", tuple(strides) if strides else None), ("stem_dim", stem_dim),
                              ("fc_dim", fc_dim)) if v is not None}
    spec = replace(spec, **over)
    modes = (int(fso_modes[0]), int(fso_modes[1])) if fso_modes else None
    return NeRV((int(input_shape[1]), int(input_shape[2])), spec, fso_block, fso_mode, modes, placement)
