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


def compile_errors():
    """The exception classes that mean "this model cannot be compiled here" in the installed
    torch (2.14): a backend that failed (torch._dynamo.exc.BackendCompilerFailed, which
    inductor's own failures, InductorError, subclass, and which wraps any error a backend
    raises), a C++ / CUDA compiler that is missing or fails (torch._inductor.exc.CppCompileError,
    InvalidCxxCompiler), Triton missing or the GPU too old for it (TritonMissing,
    GPUTooOldForTriton, passed through unwrapped), an operator inductor cannot lower, and an
    internal dynamo error. Anything else a compiled call raises (a wrong shape, out of memory, a
    NaN check) is an error of the model or its inputs and must not be hidden by running eagerly.
    Imported on first use: torch._dynamo takes seconds to import and only --compile needs it."""
    import torch._dynamo.exc as dynamo_exc
    import torch._inductor.exc as inductor_exc
    return (dynamo_exc.BackendCompilerFailed, dynamo_exc.InternalTorchDynamoError,
            inductor_exc.CppCompileError, inductor_exc.InvalidCxxCompiler,
            inductor_exc.TritonMissing, inductor_exc.GPUTooOldForTriton,
            inductor_exc.LoweringException, inductor_exc.MissingOperatorWithoutDecomp)


class CompileFallback(torch.nn.Module):
    """`torch.compile(model)`, falling back to the eager model with a one-line warning naming the
    error when compiling fails: torch.compile refuses the platform (a RuntimeError before
    anything is run, e.g. an unsupported Python), or the first call fails to compile
    (compile_errors()). Compilation happens at the first call, so that is where its failures are
    caught; every other error of a call is raised as it is."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        try:
            self.compiled = torch.compile(model)
        except RuntimeError as e:  # torch.compile runs nothing yet: only the platform can fail
            self.compiled = None
            self.warn(e)

    @staticmethod
    def warn(error):
        """One line on stderr: the error's class (and a backend's inner error) and message."""
        inner = getattr(error, 'inner_exception', None)
        name = type(error).__name__ + (f' / {type(inner).__name__}' if inner is not None else '')
        text = str(inner if inner is not None else error).strip()
        print(f'warning: --compile unavailable ({name}: '
              f'{text.splitlines()[0][:200] if text else ""}); running eagerly',
              file=sys.stderr)

    def forward(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except compile_errors() as e:
                self.compiled = None
                self.warn(e)
        return self.model(*args, **kwargs)


def compile_model(model):
    return CompileFallback(model)
