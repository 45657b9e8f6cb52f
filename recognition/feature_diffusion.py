"""Class-conditional diffusion on feature vectors (the generator of `--classify --feature_aug`).

`MLPDenoiser` predicts eps for B x D feature vectors with the UNet's calling convention
`model(x, t, y=None, augm=None)` (label -1: no label for that sample; y=None: none for the
batch), so the project's own GaussianDiffusionTrainer trains it unchanged: `--cfg` (label
dropout), `--cb --tau` (the class-balancing regulariser, with the real class frequencies as its
target distribution, as diffusion training from scratch uses) and `--T --beta_1 --beta_T` mean
what they mean for images. Sampling runs GaussianDiffusionSampler's own steps with
`--sample_method`, `--omega` and the sampler flags resolved as for --classify's generated images
(`--sampler`, `--sample_steps`, `--spacing`, `--eta`, `--var_type`; unset:
samplers.RECOMMENDED_SYNTHETIC), but never clips: neither the x0 prediction (`--clip_denoised` is
ignored) nor the result, since [-1, 1] is an image range and standardised features are
unbounded.

Features are standardised per dimension (mean and std of the real set, saved in every
checkpoint) before diffusion; `FeatureStats` maps them there and back.

Training is a run folder of its own (LOGDIR/feature_diffusion): Adam, `--feat_lr` decayed to 0
over `--feat_steps` on a cosine, gradient-norm clip `--grad_clip`, an EMA copy
(`--feat_ema_decay`) that samples; `ckpt_{steps done}.pt` written atomically every
`--feat_save_step` steps and at the end; the batch of step s is a pure function of (seed, s)
and every RNG state is saved, so on the CPU an interrupted and resumed run equals a straight one
bitwise; SIGINT/SIGTERM save and stop.
"""
import copy
import dataclasses
import math
import os
import time
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from checkpoint import save_checkpoint
from diffusion import EMA, GaussianDiffusionSampler, GaussianDiffusionTrainer
from model import TimeEmbedding
from runfolder import (StepBatchSampler, load_kind_checkpoint, newest_loadable_checkpoint,
                       rng_state, set_rng_state)
from utils import UserError

SAMPLE_CHUNK = 4096  # feature vectors sampled per batch (they are small)


# ---------------------------------------------------------------------------------------------
# the denoiser

class ResidualMLPBlock(nn.Module):
    """h + Linear(SiLU(Linear(SiLU(LayerNorm(h) * (1 + scale) + shift)))), (scale, shift) a
    linear map of SiLU(emb) (adaptive LayerNorm: the time and label act multiplicatively, which
    per-class variances need): width -> width."""

    def __init__(self, width):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.emb_proj = nn.Linear(width, 2 * width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h, emb):
        scale, shift = self.emb_proj(F.silu(emb)).chunk(2, dim=1)
        z = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(F.silu(self.fc1(F.silu(z))))


class MLPDenoiser(nn.Module):
    """eps-prediction MLP for feature vectors.

    Args:
        dim: D, the length of a feature vector.
        num_class: number of classes of the label embedding.
        T: diffusion steps (rows of the sinusoidal time table).
        width: hidden width (even); blocks: residual blocks.
    Forward:
        x: B x D float32; t: B int64 in [0, T); y: B int64 in [0, num_class), entries -1 meaning
        "no label" for that sample, or None for an unconditional batch (as model.UNet); augm is
        accepted for the trainer's calling convention and ignored (features are not augmented).
        Returns eps_hat: B x D.
    The time embedding is the UNet's (sinusoidal table + 2-layer MLP); the label embedding is
    added to it and both modulate every block (ResidualMLPBlock); the last layer starts at zero,
    so the untrained model predicts eps = 0.
    """

    def __init__(self, dim, num_class, T, width=256, blocks=3):
        super().__init__()
        self.dim, self.num_class = dim, num_class
        self.time_embedding = TimeEmbedding(T, width, width)
        self.label_embedding = nn.Embedding(num_class, width)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualMLPBlock(width) for _ in range(blocks))
        # no normalisation before the output: the residual stream keeps the scale of x, which
        # eps must follow far out in the tails (a final LayerNorm bounded it, and DDPM then
        # left a few samples 10 to 25 stds from their class on the Gaussian test)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def embed(self, t, y=None):
        """Time (+ label) embedding: B x width."""
        emb = self.time_embedding(t)
        if y is not None:
            has_label = (y >= 0)
            label_emb = self.label_embedding(y.clamp(min=0))
            emb = emb + label_emb * has_label[:, None].to(label_emb.dtype)
        return emb

    def forward(self, x, t, y=None, augm=None):
        emb = self.embed(t, y)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


def build_denoiser(settings):
    """The MLPDenoiser of a training-settings dict (see training_settings), on the CPU."""
    return MLPDenoiser(settings['dim'], settings['num_class'], settings['T'], settings['width'],
                       settings['blocks'])


# ---------------------------------------------------------------------------------------------
# standardisation

class FeatureStats:
    """Per-dimension mean and std (float32 numpy, length D) of the real features.
    Dimensions that never vary (dead ReLU channels) get std 1, so they map to 0 and back."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    @classmethod
    def of(cls, features):
        """The statistics of N x D features (float64 accumulation)."""
        f = np.asarray(features, np.float64)
        std = f.std(0)
        return cls(f.mean(0), np.where(std > 1e-6 * max(float(std.max()), 1e-12), std, 1.0))

    def standardise(self, features):
        return ((np.asarray(features, np.float32) - self.mean) / self.std).astype(np.float32)

    def restore(self, z):
        return (np.asarray(z, np.float32) * self.std + self.mean).astype(np.float32)

    def matches(self, other):
        """Equal up to float noise (the same classifier encoded on another device)."""
        return (self.mean.shape == other.mean.shape
                and np.allclose(self.mean, other.mean, rtol=1e-3, atol=1e-4)
                and np.allclose(self.std, other.std, rtol=1e-3, atol=1e-4))


# ---------------------------------------------------------------------------------------------
# checkpoints

# settings of a feature model that a resumed run must share with the checkpoint: key -> flag
SETTING_FLAGS = {'dim': 'the classifier\'s feature dimension', 'num_class': 'classes',
                 'T': '--T', 'beta_1': '--beta_1', 'beta_T': '--beta_T', 'cfg': '--cfg',
                 'cb': '--cb', 'tau': '--tau', 'width': '--feat_width',
                 'blocks': '--feat_blocks', 'lr': '--feat_lr', 'batch_size': '--feat_batch_size',
                 'steps': '--feat_steps', 'ema_decay': '--feat_ema_decay',
                 'grad_clip': '--grad_clip', 'seed': '--seed'}


def training_settings(cfg, dim, num_class):
    """What defines a feature model's training, as a dict of plain values (--tau counts only
    with --cb). --feat_steps is one of them: the learning rate decays over it."""
    return {'dim': int(dim), 'num_class': int(num_class), 'T': cfg.T, 'beta_1': cfg.beta_1,
            'beta_T': cfg.beta_T, 'cfg': bool(cfg.cfg), 'cb': bool(cfg.cb),
            'tau': float(cfg.tau) if cfg.cb else None, 'width': cfg.feat_width,
            'blocks': cfg.feat_blocks, 'lr': cfg.feat_lr, 'batch_size': cfg.feat_batch_size,
            'steps': cfg.feat_steps, 'ema_decay': cfg.feat_ema_decay, 'grad_clip': cfg.grad_clip,
            'seed': cfg.seed}


def load_feature_checkpoint(path):
    """torch.load of a feature-diffusion checkpoint; UserError when truncated or foreign."""
    return load_kind_checkpoint(path, 'feature_diffusion',
                                'a feature-diffusion checkpoint of --feature_aug')


def resumable_checkpoint(folder, settings, classifier=None):
    """(path, checkpoint) of the newest loadable feature checkpoint in `folder` (None if there
    is none), after checking that it belongs to a model of these training settings and, when
    `classifier` (the sha256 of the classifier's weights) is given, of that classifier's
    features; UserError naming the file and the differences otherwise."""
    found = newest_loadable_checkpoint(folder, load=load_feature_checkpoint) \
        if os.path.isdir(folder) else None
    if found is None:
        return None
    path, ckpt = found
    old = ckpt.get('settings', {})
    hint = (f'use another --logdir (--feature_classifier_logdir keeps the trained classifier) '
            f'or remove {folder}')
    for key in ('dim', 'num_class'):
        if old.get(key) != settings[key]:
            raise UserError(f'{path}: a feature model of {old.get("dim")}-d features and '
                            f'{old.get("num_class")} classes; the classifier gives '
                            f'{settings["dim"]}-d features of {settings["num_class"]} classes: '
                            f'{hint}')
    differ = [k for k in settings if old.get(k) != settings[k]]
    if differ:
        text = ', '.join(f'{SETTING_FLAGS[k]} {old.get(k)} (now {settings[k]})' for k in differ)
        raise UserError(f'{path}: the feature model was trained with {text}; {hint}')
    check_classifier(path, ckpt, classifier, hint)
    return path, ckpt


def check_classifier(path, ckpt, classifier, hint):
    """UserError when the feature checkpoint records another classifier than `classifier` (the
    sha256 of its weights; None: unknown yet, checkpoints before it was recorded pass)."""
    recorded = ckpt.get('classifier_sha256')
    if classifier is not None and recorded is not None and recorded != classifier:
        raise UserError(f'{path}: the feature model was trained on the features of another '
                        f'classifier (weights sha256 {recorded[:12]}, now {classifier[:12]}); '
                        f'{hint}')


# ---------------------------------------------------------------------------------------------
# training

def new_training_state(cfg, settings, device):
    """Fresh denoiser (seeded with --seed), its EMA copy, Adam and the cosine schedule."""
    torch.manual_seed(cfg.seed)
    net = build_denoiser(settings).to(device)
    ema_model = copy.deepcopy(net).eval()
    for p in ema_model.parameters():
        p.requires_grad_(False)
    optim = torch.optim.Adam(net.parameters(), lr=cfg.feat_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, cosine_decay(cfg.feat_steps))
    return types.SimpleNamespace(net=net, ema_model=ema_model, ema=EMA(ema_model, net),
                                 optim=optim, sched=sched, step=0)


def restore_training(state, found, stats, classifier=None):
    """Load a checkpoint (path, dict) from resumable_checkpoint into `state`, RNG included,
    after checking that it was trained on the features of `classifier` (see check_classifier)
    with these statistics."""
    path, ckpt = found
    check_classifier(path, ckpt, classifier, f'use another --logdir or remove '
                                             f'{os.path.dirname(path)}')
    if not stats.matches(FeatureStats(ckpt['mean'], ckpt['std'])):
        raise UserError(f'{path}: the feature model was trained on the features of another '
                        f'classifier; use another --logdir or remove {os.path.dirname(path)}')
    state.net.load_state_dict(ckpt['net_model'])
    state.ema_model.load_state_dict(ckpt['ema_model'])
    state.optim.load_state_dict(ckpt['optim'])
    state.sched.load_state_dict(ckpt['sched'])
    set_rng_state(ckpt['rng'])
    state.step = ckpt['step']


def train_feature_model(cfg, z, labels, class_counts, stats, folder, device, stop, found=None,
                        classifier=None):
    """Train (or resume, or find finished) the feature model of the flags on standardised
    features, in `folder`.

    z: N x D float32 standardised features; labels: N int64 in [0, C); class_counts: C real
    counts (the class-balancing target distribution is their frequencies); stats: the
    FeatureStats that standardised z (saved with the model); found: what resumable_checkpoint
    returned, or None to start afresh; classifier: the sha256 of the weights of the classifier
    whose features z are (saved with the model, checked on resume); stop: a StopRequest.
    Returns (EMA model in eval mode on `device`, 'done') or (None, 'stopped') after saving.
    """
    num_class = len(class_counts)
    settings = training_settings(cfg, z.shape[1], num_class)
    state = new_training_state(cfg, settings, device)
    if found is not None:
        restore_training(state, found, stats, classifier)
        if state.step >= cfg.feat_steps:
            print(f'{found[0]}: feature model already trained ({state.step} steps)')
            return state.ema_model, 'done'
        print(f'resuming the feature model from {found[0]} at step {state.step + 1}')
    os.makedirs(folder, exist_ok=True)
    weight = np.asarray(class_counts, np.float64) / max(int(np.sum(class_counts)), 1)
    trainer = GaussianDiffusionTrainer(state.net, cfg.beta_1, cfg.beta_T, cfg.T,
                                       num_class=num_class, cfg=cfg.cfg, cb=cfg.cb, tau=cfg.tau,
                                       weight=weight).to(device)
    x_all = torch.from_numpy(np.ascontiguousarray(z)).to(device)
    y_all = torch.from_numpy(np.asarray(labels, np.int64)).to(device)
    batches = iter(StepBatchSampler(len(y_all), min(cfg.feat_batch_size, len(y_all)), cfg.seed,
                                    state.step))
    keep = cfg.keep_ckpt if cfg.keep_ckpt > 0 else 2

    def save(step):
        ckpt = {'kind': 'feature_diffusion', 'settings': settings, 'step': step,
                'net_model': state.net.state_dict(), 'ema_model': state.ema_model.state_dict(),
                'optim': state.optim.state_dict(), 'sched': state.sched.state_dict(),
                'rng': rng_state(), 'mean': stats.mean, 'std': stats.std,
                'classifier_sha256': classifier,
                'class_counts': np.asarray(class_counts, np.int64)}
        return step, save_checkpoint(ckpt, folder, step, keep=keep)

    from tensorboardX import SummaryWriter
    writer = SummaryWriter(folder)
    print(f'training the feature model ({"cb, tau " + str(cfg.tau) if cfg.cb else "no cb"}, '
          f'{"cfg" if cfg.cfg else "no cfg"}, T {cfg.T}) on {len(y_all)} {z.shape[1]}-d '
          f'features: steps {state.step + 1}..{cfg.feat_steps} into {folder}')
    window, logged, saved, started = [], None, (None, None), time.time()
    try:
        first = state.step + 1
        for step in range(first, cfg.feat_steps + 1):
            idx = torch.as_tensor(next(batches), device=device)
            window.append(train_step(cfg, state, trainer, x_all[idx], y_all[idx], step))
            if step % 10 == 0 or step == cfg.feat_steps:
                logged, window = np.mean(window, axis=0), []
                for name, value in zip(('loss', 'loss_ddpm', 'loss_reg'), logged):
                    writer.add_scalar(name, float(value), step)
            if (cfg.feat_save_step > 0 and step % cfg.feat_save_step == 0) \
                    or step == cfg.feat_steps:
                saved = save(step)
            if stop.signal and step < cfg.feat_steps:
                if saved[0] != step:
                    saved = save(step)
                print(f'{stop.signal}: saved {saved[1]}; run the same command again to resume '
                      f'the feature model from step {step + 1}')
                return None, 'stopped'
    finally:
        writer.close()
    print(f'feature model trained: {cfg.feat_steps} steps ({cfg.feat_steps - first + 1} in '
          f'{time.time() - started:.0f} s), last logged loss_ddpm {logged[1]:.4f}, loss_reg '
          f'{logged[2]:.4f}; saved {saved[1]}')
    return state.ema_model, 'done'


def cosine_decay(steps):
    """Learning-rate factor after s of `steps` steps: 0.5 (1 + cos(pi s / steps)), 1 down to 0."""
    return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps))


def train_step(cfg, state, trainer, x_0, y_0, step):
    """One Adam step of the trainer's loss on a batch (x_0: B x D, y_0: B), then the schedule
    and the EMA: (loss, loss_ddpm, loss_reg) floats. A non-finite loss stops with a UserError."""
    state.net.train()
    loss_ddpm, loss_reg = trainer(x_0, y_0)
    loss_ddpm, loss_reg = loss_ddpm.mean(), loss_reg.mean()
    loss = loss_ddpm + loss_reg
    if not torch.isfinite(loss):
        raise UserError(f'feature model, step {step}: the loss is {loss.item()}; lower '
                        f'--feat_lr, then resume')
    state.optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.net.parameters(), cfg.grad_clip)
    state.optim.step()
    state.sched.step()
    state.ema.update(cfg.feat_ema_decay)
    return loss.item(), loss_ddpm.item(), loss_reg.item()


# ---------------------------------------------------------------------------------------------
# sampling

def feature_sampler_settings(cfg):
    """The samplers.SamplerSettings of the sampling flags for drawn features: those of
    --classify's generated sets (factory.sampler_settings, use 'synthetic'; an unset --sampler
    means samplers.RECOMMENDED_SYNTHETIC), never clipped: the clip to [-1, 1] is an image
    range, and standardised features are unbounded."""
    from factory import sampler_settings
    return dataclasses.replace(sampler_settings(cfg, 'synthetic'), clip_denoised=False)


def build_feature_sampler(cfg, model):
    """GaussianDiffusionSampler of the sampling flags over the feature model, clipping neither
    the x0 prediction nor the result."""
    settings = feature_sampler_settings(cfg)
    try:
        return GaussianDiffusionSampler(model, cfg.beta_1, cfg.beta_T, cfg.T, model.num_class,
                                        var_type=cfg.var_type, sampler=settings.sampler,
                                        sample_steps=settings.sample_steps, eta=settings.eta,
                                        skip_type=cfg.skip_type, spacing=settings.spacing,
                                        clip_output=False)
    except ValueError as e:
        raise UserError(f'--feature_aug: --sampler {settings.sampler}: {e}; check '
                        f'--sample_steps, --spacing, --eta') from None


@torch.no_grad()
def sample_features(cfg, model, per_class, device, stop=None):
    """Draw per_class[c] standardised feature vectors of every class c with the sampling flags.

    model: a trained MLPDenoiser in eval mode on `device`. Classes come in order; the initial
    noise comes from a CPU generator and the steps' noise from the global RNG forked and seeded
    with --seed, so the draw does not depend on the device's RNG state or change it.
    Returns (float32 N x D, int64 N), or None when `stop` received a signal.
    """
    sampler = build_feature_sampler(cfg, model).to(device)
    labels = np.repeat(np.arange(len(per_class)), per_class).astype(np.int64)
    out = []
    g = torch.Generator().manual_seed(cfg.seed)
    devices = [device] if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        for i in range(0, len(labels), SAMPLE_CHUNK):
            if stop is not None and stop.signal:
                return None
            y = torch.from_numpy(labels[i:i + SAMPLE_CHUNK]).to(device)
            x_T = torch.randn(len(y), model.dim, generator=g).to(device)
            x, _ = sampler(x_T, omega=cfg.omega, method=cfg.sample_method, y=y)
            out.append(x.cpu())
    z = torch.cat(out).numpy() if out else np.zeros((0, model.dim), np.float32)
    return z.astype(np.float32), labels
