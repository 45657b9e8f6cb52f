"""The ADA-style augmentation of `--augm` with its 9-value conditioning vector (AugmentPipe)."""
import math

import torch
import torch.nn.functional as F


def _eye(batch, device):
    return torch.eye(3, device=device).repeat(batch, 1, 1)


def _scale2d(sx, sy):
    m = _eye(len(sx), sx.device)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rotate2d(theta):
    m = _eye(len(theta), theta.device)
    c, s = theta.cos(), theta.sin()
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def _translate2d(tx, ty):
    m = _eye(len(tx), tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


class AugmentPipe:
    """Batched ADA-style geometric augmentation (runs on x's device).

    Per image: x-flip with probability `xflip_p`; with probability `p` each, independently: y-flip,
    isotropic scale 2**(0.2 N(0,1)), rotation U(-pi, pi), anisotropic scale 2**(0.2 N(0,1)) along
    an angle phi ~ U(-pi, pi), translation N(0,1)/8 of the image size per axis. One affine matrix
    per image; bicubic resampling with reflection padding.

    `__call__(x)` with x B x 3 x H x W in [-1, 1] returns (x_aug, augm): x_aug same shape/dtype/
    device, clamped to [-1, 1] (bicubic overshoots a little), augm B x 9 float32 =
    [xflip, yflip, log2 s, cos(rot) - 1, sin(rot), log2 a cos(phi), log2 a sin(phi), tx, ty]
    with zeros for ops not applied (all zeros = no augmentation, as at sampling).
    tx, ty are fractions of the width/height; positive tx moves the content right, ty down;
    positive rot turns it clockwise on screen.
    """

    SCALE_STD = 0.2
    TRANSLATE_STD = 0.125

    def __init__(self, p=0.12, xflip_p=0.5):
        self.p = float(p)
        self.xflip_p = float(xflip_p)

    def sample_params(self, batch, device, generator=None):
        """Draw the per-image parameters: dict of B-vectors (identity values where not applied)."""
        def rand(*shape):
            return torch.rand(shape, device=device, generator=generator)

        def randn(*shape):
            return torch.randn(shape, device=device, generator=generator)

        def gate(v, prob, idle=0.0):
            mask = rand(batch) < prob
            return torch.where(mask.view(-1, *([1] * (v.dim() - 1))), v, torch.full_like(v, idle))

        ones = torch.ones(batch, device=device)
        t = gate(randn(batch, 2) * self.TRANSLATE_STD, self.p)
        return {
            'xflip': gate(ones, self.xflip_p), 'yflip': gate(ones, self.p),
            'log_s': gate(randn(batch) * self.SCALE_STD, self.p),
            'rot': gate((rand(batch) * 2 - 1) * math.pi, self.p),
            'log_a': gate(randn(batch) * self.SCALE_STD, self.p),
            'phi': (rand(batch) * 2 - 1) * math.pi,
            'tx': t[:, 0], 'ty': t[:, 1],
        }

    @staticmethod
    def encode(params):
        """Parameters -> B x 9 conditioning vector (see the class docstring)."""
        la, phi = params['log_a'], params['phi']
        return torch.stack([params['xflip'], params['yflip'], params['log_s'],
                            params['rot'].cos() - 1, params['rot'].sin(),
                            la * phi.cos(), la * phi.sin(), params['tx'], params['ty']], 1).float()

    @staticmethod
    def matrix(params, height, width):
        """Forward content transform in pixel units about the image centre: B x 3 x 3."""
        p = params
        s = torch.exp2(p['log_s'])
        a = torch.exp2(p['log_a'])
        m = _scale2d(1 - 2 * p['xflip'], 1 - 2 * p['yflip'])
        m = _scale2d(s, s) @ m
        m = _rotate2d(p['rot']) @ m
        m = _rotate2d(p['phi']) @ _scale2d(a, 1 / a) @ _rotate2d(-p['phi']) @ m
        return _translate2d(p['tx'] * width, p['ty'] * height) @ m

    def apply(self, x, params):
        """Warp x (B x C x H x W in [-1, 1]) by `params`; same shape, dtype, device, range."""
        b, _, h, w = x.shape
        fwd = self.matrix({k: v.to(x.device, torch.float32) for k, v in params.items()}, h, w)
        to_pix = _scale2d(torch.full((b,), w / 2, device=x.device),
                          torch.full((b,), h / 2, device=x.device))
        to_norm = _scale2d(torch.full((b,), 2 / w, device=x.device),
                           torch.full((b,), 2 / h, device=x.device))
        theta = (to_norm @ torch.linalg.inv(fwd) @ to_pix)[:, :2]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x.float(), grid, mode='bicubic', padding_mode='reflection',
                            align_corners=False)
        return out.clamp_(-1.0, 1.0).to(x.dtype)

    def __call__(self, x, generator=None):
        """x: B x 3 x H x W in [-1, 1] -> (x_aug, augm B x 9); see the class docstring."""
        params = self.sample_params(x.shape[0], x.device, generator)
        return self.apply(x, params), self.encode(params)
