"""The `--augm` augmentation of the public CBDM code, batched in torch: k-diffusion's "Karras
augmentation pipeline" with its 9-value conditioning vector (see the spec, "Augmentation").

Per image, drawn in this order (p = 0.12):
    a0 ~ {0, 1}                                x-flip (always drawn: half the images)
    a1 = Bernoulli(p) * {0, 1}                 y-flip (6% of the images)
    a2 = Bernoulli(p) * N(0, 1)                isotropic scale (2**0.2)**a2
    a3 = Bernoulli(p) * U(-pi, pi)             rotation rot(-a3)
    a4, a5 = Bernoulli(p) * (U(-pi, pi), N(0, 1))   anisotropy (2**0.2)**a5 along direction a4
    a6, a7 = Bernoulli(p) * (N(0, 1), N(0, 1))      shift a6 / 8 of the width, a7 / 8 of the height
Each draw is one torch call for the whole batch, so the random stream is not the public
per-image one; the distribution is the same. The content at input pixel p = (x, y) (column,
row, measured from the centre size / 2 - 0.5) moves to X Y S R A D p (the translation D acts
first, the x-flip X last). The conditioning is the raw draws [a0, a1, a2, cos a3 - 1, sin a3,
a5 cos a4, a5 sin a4, a6, a7]; all zeros means "not augmented", which is what sampling passes.

Resampling is what the public code's `skimage.transform.warp(order=3, mode='reflect',
clip=False)` does on an affine map: Catmull-Rom bicubic over the 4 x 4 neighbours, indices
outside the image mirrored about the edge pixels' centres (d c b | a b c d | c b a), values not
clipped. torch's grid_sample is not used because its bicubic kernel (a = -0.75) and its
reflection padding (which repeats the edge pixel) both differ from that.
"""
import math

import torch

P_AUGMENT = 0.12           # a_prob of the public pipeline
SCALE_BASE = 2 ** 0.2      # a_scale and a_aniso: the factor per unit of a2 / a5
TRANSLATE_UNIT = 1 / 8     # a_trans: the shift per unit of a6 / a7, as a fraction of the size
NUM_DRAWS = 8              # a0 .. a7


def draw(batch, p=P_AUGMENT, device='cpu', generator=None):
    """The raw draws a0 .. a7 of `batch` images, B x 8 float32, in the public pipeline's
    order (see the module docstring), from the global torch RNG or `generator`. An operation
    that is not applied has all its draws 0."""
    def rand():
        return torch.rand(batch, device=device, generator=generator)

    def randn():
        return torch.randn(batch, device=device, generator=generator)

    def coin():
        return torch.randint(2, (batch,), device=device, generator=generator).float()

    def gate():
        return (rand() < p).float()

    a0 = coin()
    do = gate()
    a1 = coin() * do
    do = gate()
    a2 = randn() * do
    do = gate()
    a3 = (rand() * 2 * math.pi - math.pi) * do
    do = gate()
    a4 = (rand() * 2 * math.pi - math.pi) * do
    a5 = randn() * do
    do = gate()
    a6 = randn() * do
    a7 = randn() * do
    return torch.stack([a0, a1, a2, a3, a4, a5, a6, a7], 1)


def conditioning(draws):
    """B x 8 draws -> B x 9 conditioning vector [a0, a1, a2, cos a3 - 1, sin a3, a5 cos a4,
    a5 sin a4, a6, a7] (raw values, not scaled), float32."""
    a0, a1, a2, a3, a4, a5, a6, a7 = draws.float().unbind(1)
    return torch.stack([a0, a1, a2, a3.cos() - 1, a3.sin(), a5 * a4.cos(), a5 * a4.sin(),
                        a6, a7], 1)


def _affine(batch, dtype, device):
    return torch.eye(3, dtype=dtype, device=device).repeat(batch, 1, 1)


def _diag(sx, sy):
    m = _affine(len(sx), sx.dtype, sx.device)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rot(theta):
    """rot(theta) = [[cos, -sin], [sin, cos]] acting on (x, y)."""
    m = _affine(len(theta), theta.dtype, theta.device)
    c, s = theta.cos(), theta.sin()
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def _shift(tx, ty):
    m = _affine(len(tx), tx.dtype, tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def forward_matrix(draws, height, width):
    """The map from input to output pixel positions, B x 3 x 3 float64 in homogeneous
    (x, y, 1) coordinates measured from the image centre: X Y S R A D."""
    a0, a1, a2, a3, a4, a5, a6, a7 = draws.to(torch.float64).unbind(1)
    ones = torch.ones_like(a0)
    flip_x = _diag(1 - 2 * a0, ones)
    flip_y = _diag(ones, 1 - 2 * a1)
    scale = _diag(SCALE_BASE ** a2, SCALE_BASE ** a2)
    rotate = _rot(-a3)
    aniso = _rot(a4) @ _diag(SCALE_BASE ** a5, SCALE_BASE ** -a5) @ _rot(-a4)
    shift = _shift(a6 * TRANSLATE_UNIT * width, a7 * TRANSLATE_UNIT * height)
    return flip_x @ flip_y @ scale @ rotate @ aniso @ shift


def _mirror(index, size):
    """Integer indices mirrored into [0, size - 1] about the edge pixels' centres."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = torch.remainder(index, period)
    return torch.where(index > size - 1, period - index, index)


def _catmull_rom(t):
    """Weights of the 4 neighbours floor - 1 .. floor + 2 at fraction t in [0, 1): ... x 4."""
    return torch.stack([((-0.5 * t + 1.0) * t - 0.5) * t,
                        (1.5 * t - 2.5) * t * t + 1.0,
                        ((-1.5 * t + 2.0) * t + 0.5) * t,
                        (0.5 * t - 0.5) * t * t], -1)


def warp(x, matrix):
    """Resample x (B x C x H x W) so that the content at input position p appears at
    matrix @ p (B x 3 x 3, centred pixel coordinates, see forward_matrix): output pixel q takes
    the Catmull-Rom bicubic value of the input at matrix^-1 q, mirror padding, no clipping.
    Returns B x C x H x W in x's dtype."""
    b, c, h, w = x.shape
    inverse = torch.linalg.inv(matrix.to(x.device, torch.float64))
    rows = torch.arange(h, dtype=torch.float64, device=x.device) - (h / 2 - 0.5)
    cols = torch.arange(w, dtype=torch.float64, device=x.device) - (w / 2 - 0.5)
    qy, qx = torch.meshgrid(rows, cols, indexing='ij')
    q = torch.stack([qx, qy, torch.ones_like(qx)]).reshape(3, -1)          # 3 x HW
    src = inverse @ q                                                       # B x 3 x HW
    sx, sy = src[:, 0] + (w / 2 - 0.5), src[:, 1] + (h / 2 - 0.5)           # B x HW
    fx, fy = sx.floor(), sy.floor()
    wx = _catmull_rom((sx - fx).float())                                    # B x HW x 4
    wy = _catmull_rom((sy - fy).float())
    taps = torch.arange(-1, 3, device=x.device)
    ix = _mirror(fx.long()[..., None] + taps, w)                            # B x HW x 4
    iy = _mirror(fy.long()[..., None] + taps, h)
    index = (iy[..., :, None] * w + ix[..., None, :]).reshape(b, 1, -1)     # B x 1 x HW*16
    values = x.float().reshape(b, c, h * w).gather(2, index.expand(b, c, -1))
    weights = (wy[..., :, None] * wx[..., None, :]).reshape(b, 1, h * w, 16)
    out = (values.reshape(b, c, h * w, 16) * weights).sum(-1)
    return out.reshape(b, c, h, w).to(x.dtype)


class AugmentPipe:
    """`--augm`: `pipe(x)` with x B x C x H x W (in [-1, 1]) returns (x_aug, cond): x_aug of
    the same shape, dtype and device (not clipped: bicubic may overshoot [-1, 1]) and cond
    B x 9 float32, the conditioning of the raw draws (see the module docstring)."""

    def __init__(self, p=P_AUGMENT):
        self.p = float(p)

    def __call__(self, x, generator=None):
        draws = draw(x.shape[0], self.p, x.device, generator)
        return self.apply(x, draws), conditioning(draws)

    @staticmethod
    def apply(x, draws):
        """x warped by the transform of `draws` (B x 8)."""
        return warp(x, forward_matrix(draws, x.shape[-2], x.shape[-1]))
