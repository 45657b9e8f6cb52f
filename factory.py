"""Model and sampler factories: the UNet and the diffusion sampler that a namespace of flags
(main.config()) describes, and `torch.compile` with a fallback. Used by training, evaluation
and the recognition package alike, so every caller builds the same objects from the same flags.
"""
import sys

import torch

from diffusion import GaussianDiffusionSampler
from model import UNet
import samplers
from samplers import resolve
from utils import UserError


def attn_levels(attn):
    """The --attn flag without its negative entries (`--attn -1` means no attention)."""
    return [a for a in attn if a >= 0]


def build_model(cfg, num_class):
    """The UNet of the flags (ch, ch_mult, attn, num_res_blocks, dropout, T, conditional, augm)."""
    return UNet(T=cfg.T, ch=cfg.ch, ch_mult=list(cfg.ch_mult), attn=attn_levels(cfg.attn),
                num_res_blocks=cfg.num_res_blocks, dropout=cfg.dropout, cond=cfg.conditional,
                augm=cfg.augm, num_class=num_class)


def sampler_settings(cfg, use):
    """The samplers.SamplerSettings that the flags (--sampler, --sample_steps, --spacing, --eta,
    --clip_denoised, --skip_type, --T) give `use` ('eval', 'grid', 'sample', 'synthetic'; an
    unset --sampler or --clip_denoised takes the use's default, samplers.USE_DEFAULTS)."""
    try:
        return resolve(cfg.sampler, cfg.sample_steps, cfg.spacing, cfg.eta, cfg.clip_denoised,
                       use, skip_type=cfg.skip_type, T=cfg.T)
    except ValueError as e:
        raise UserError(f'--sampler / --spacing: {e}') from None


def build_sampler(cfg, model, num_class, use):
    """The sampler of the flags (schedule, var_type, amp and the sampler settings of `use`,
    see sampler_settings) over `model`, compiled with --compile. `--sampler auto` prints what it
    resolved to."""
    settings = sampler_settings(cfg, use)
    if settings.auto:
        print(f'--sampler auto ({use}): {settings.describe()} '
              f'(samplers.{samplers.recommended(use)[0]})')
    if cfg.compile:
        model = compile_model(model)
    try:
        return GaussianDiffusionSampler(
            model, cfg.beta_1, cfg.beta_T, cfg.T, num_class, img_size=cfg.img_size,
            var_type=cfg.var_type, sampler=settings.sampler, sample_steps=settings.sample_steps,
            eta=settings.eta, skip_type=cfg.skip_type, spacing=settings.spacing, amp=cfg.amp,
            clip_denoised=settings.clip_denoised)
    except ValueError as e:  # e.g. a use's default sampler with --sample_steps > --T
        raise UserError(f'--sampler {settings.sampler} ({use}): {e}; check --sample_steps, '
                        f'--spacing, --eta') from None


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
