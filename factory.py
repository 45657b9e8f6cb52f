"""Model and sampler factories: the UNet and the diffusion sampler that a namespace of flags
(main.config()) describes, and `torch.compile` with a fallback. Used by training, evaluation
and the recognition package alike, so every caller builds the same objects from the same flags.
"""
import sys

import torch

from diffusion import GaussianDiffusionSampler
from model import UNet


def attn_levels(attn):
    """The --attn flag without its negative entries (`--attn -1` means no attention)."""
    return [a for a in attn if a >= 0]


def build_model(cfg, num_class):
    """The UNet of the flags (ch, ch_mult, attn, num_res_blocks, dropout, T, conditional, augm)."""
    return UNet(T=cfg.T, ch=cfg.ch, ch_mult=list(cfg.ch_mult), attn=attn_levels(cfg.attn),
                num_res_blocks=cfg.num_res_blocks, dropout=cfg.dropout, cond=cfg.conditional,
                augm=cfg.augm, num_class=num_class)


def build_sampler(cfg, model, num_class):
    """The sampler of the flags (schedule, var_type, sampler, sample_steps, eta, spacing, amp)
    over `model`, compiled with --compile."""
    if cfg.compile:
        model = compile_model(model)
    return GaussianDiffusionSampler(
        model, cfg.beta_1, cfg.beta_T, cfg.T, num_class, img_size=cfg.img_size,
        var_type=cfg.var_type, sampler=cfg.sampler, sample_steps=cfg.sample_steps, eta=cfg.eta,
        skip_type=cfg.skip_type, spacing=cfg.spacing, amp=cfg.amp)


class CompileFallback(torch.nn.Module):
    """`torch.compile(model)`, falling back to the eager model with a warning when compiling
    fails (no compiler toolchain, unsupported platform or operator). Compilation happens at the
    first call, so that is where failures are caught."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        try:
            self.compiled = torch.compile(model)
        except Exception as e:
            self.compiled = None
            self.warn(e)

    @staticmethod
    def warn(error):
        print(f'warning: --compile unavailable ({type(error).__name__}: '
              f'{str(error).splitlines()[0][:200] if str(error) else ""}); running eagerly',
              file=sys.stderr)

    def forward(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:
                self.compiled = None
                self.warn(e)
        return self.model(*args, **kwargs)


def compile_model(model):
    return CompileFallback(model)
