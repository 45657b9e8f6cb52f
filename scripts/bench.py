#!/usr/bin/env python
"""Benchmark of the fast paths against the straightforward ones, in one run, on one model.

    python scripts/bench.py [--device cpu|cuda] [--ch 64 --ch_mult 1 2 2 --attn 1 ...]
                            [--out bench.md] [--full_metrics]

Every row times a baseline and an optimised path on the same model config and inputs and prints
the median time of each (after a warm-up run), the ratio baseline / optimised and the peak
memory of each, as a markdown table:

- training step (forward, backward, Adam step) in each mode: plain (conditional, no label
  dropout), --cfg and --cb; baseline fp32 (and for --cb the two passes run separately with the
  explicit softmax attention), optimised `--amp` (and for --cb one batched forward with SDPA);
- one sampling step (network + DDPM update) for 'cond' and 'cfg' (baseline fp32 two passes,
  optimised `--amp` one batched pass);
- a full sample of a batch: DDPM over all `--full_sample_T` steps, fp32, two guidance passes
  (baseline) vs DDPM with `--amp` batched, and vs DDIM in `--sample_steps` steps with `--amp`
  batched;
- sampler throughput: images per second of a cfg-guided batch (`--amp`, batched, per-image
  noise as `--eval` draws it) for DDPM over all `--T` steps without clipping, the paper's
  setting (timed over `--full_sample_T` steps, the same run as the full-sample row, and scaled:
  DDPM time is linear in its steps), for DDIM, DPM-Solver++(2M), its SDE variant and UniPC in
  `--fast_steps` steps on the `--T`-step schedule (x0 clipped with `--clip_denoised on`) and
  for the recommended setting `--sampler auto` stands for (samplers.RECOMMENDED: sampler,
  steps, spacing, eta and clipping), with the network FLOPs per image (its network evaluations
  times one evaluation's), the time per step, the speed-up over guided DDPM and the time 50,000
  images would take at that rate on this device;
- feature metrics on `--feat_n` x `--feat_dim` random features: improved precision/recall
  (brute-force float64 numpy full distance matrices, as the reference code, vs the chunked torch
  implementation of score/metrics.py; the baseline only up to --brute_max features) and the FID
  distance on given statistics (scipy sqrtm, pytorch-fid's function, vs the torch eigh form).

`--full_metrics` adds the full-scale case: improved precision/recall and the FID statistics on
50,000 x 50,000 x 2048 features, with its time and peak RSS against the budget (10 minutes on
2 CPU cores, 4 GiB of RAM).

Peak memory: on CUDA `torch.cuda.max_memory_allocated` over the timed runs; on CPU the process'
peak resident set size over them (Linux: the high-water mark is reset before each measurement
through /proc/self/clear_refs; where that is not possible, the process-wide peak so far from
getrusage, marked with '*').
"""
import argparse
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion import AMP_DTYPES, GaussianDiffusionSampler, GaussianDiffusionTrainer, autocast  # noqa: E402
from model import UNet, check_config  # noqa: E402
from samplers import RECOMMENDED, ImageNoise, resolve  # noqa: E402
from score import metrics as M  # noqa: E402
from utils import save_text  # noqa: E402

FAST_SAMPLERS = ('ddim', 'dpm++2m', 'dpm++2m-sde', 'unipc')
N_EVAL_IMAGES = 50000

NUM_CLASS = 10
BETA_1, BETA_T = 1e-4, 0.02
GiB = 1024 ** 3
FULL_N, FULL_DIM = 50000, 2048
FULL_TIME_BUDGET_S, FULL_RAM_BUDGET = 600, 4 * GiB


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = p.add_argument_group('model')
    m.add_argument('--ch', type=int, default=64, help='base channels')
    m.add_argument('--ch_mult', type=int, nargs='+', default=[1, 2, 2], help='channel multipliers')
    m.add_argument('--attn', type=int, nargs='*', default=[1], help='levels with attention')
    m.add_argument('--num_res_blocks', type=int, default=1, help='res blocks per level')
    m.add_argument('--img_size', type=int, default=32, help='image size')
    m.add_argument('--dropout', type=float, default=0.1, help='dropout')
    r = p.add_argument_group('run')
    r.add_argument('--batch', type=int, default=8, help='batch of the training and sampling steps')
    r.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    r.add_argument('--amp', default='bf16', choices=[k for k in AMP_DTYPES if k != 'none'],
                   help='autocast dtype of the optimised paths')
    r.add_argument('--repeats', type=int, default=3, help='timed runs per figure (median)')
    r.add_argument('--threads', type=int, default=0,
                   help='CPU threads of torch and of numpy/scipy BLAS (0: their defaults); 1 is '
                        'much faster and steadier on cores shared with other work')
    r.add_argument('--seed', type=int, default=0)
    s = p.add_argument_group('sampling')
    s.add_argument('--T', type=int, default=1000, help='diffusion steps of the model')
    s.add_argument('--omega', type=float, default=1.0, help='guidance strength for cfg')
    s.add_argument('--full_sample_T', type=int, default=100,
                   help='DDPM steps of the full-sample rows (the schedule is rebuilt over this many '
                        'steps; <= --T)')
    s.add_argument('--sample_steps', type=int, default=5, help='DDIM steps of the full sample')
    s.add_argument('--sample_batch', type=int, default=2, help='batch of the full-sample rows')
    s.add_argument('--fast_steps', type=int, default=20,
                   help='steps of DDIM, DPM-Solver++(2M) (ODE and SDE) and UniPC in the '
                        'throughput table')
    s.add_argument('--clip_denoised', choices=['on', 'off'], default='on',
                   help='clip the x0 prediction in the --fast_steps rows of the throughput table '
                        '(DDPM stays unclipped, the recommended row follows samplers.RECOMMENDED)')
    s.add_argument('--sample_repeats', type=int, default=1,
                   help='timed runs of each full sample (median)')
    f = p.add_argument_group('metrics')
    f.add_argument('--feat_n', type=int, default=5000, help='features per set for the metric rows')
    f.add_argument('--feat_dim', type=int, default=2048, help='feature width')
    f.add_argument('--metric_repeats', type=int, default=1,
                   help='timed runs of each metric figure (median; no warm-up: seconds each)')
    f.add_argument('--k', type=int, default=5, help='k of improved precision/recall')
    f.add_argument('--brute_max', type=int, default=5000,
                   help='largest --feat_n for the brute-force float64 baseline')
    f.add_argument('--full_metrics', action='store_true',
                   help=f'also run improved P/R and FID statistics on {FULL_N} x {FULL_N} x '
                        f'{FULL_DIM} features (minutes)')
    p.add_argument('--out', help='also write the markdown to this file (atomically)')
    args = p.parse_args(argv)
    problem = check_config(args.ch, args.ch_mult, args.attn, args.img_size)
    if problem:
        p.error(problem)
    if not 1 <= args.full_sample_T <= args.T:
        p.error(f'--full_sample_T must be in [1, --T={args.T}]')
    if not 1 <= args.sample_steps <= args.full_sample_T:
        p.error(f'--sample_steps must be in [1, --full_sample_T={args.full_sample_T}]')
    if not 1 <= args.fast_steps <= args.T:
        p.error(f'--fast_steps must be in [1, --T={args.T}]')
    if min(args.batch, args.sample_batch, args.repeats, args.sample_repeats,
           args.metric_repeats) < 1:
        p.error('--batch, --sample_batch and the --*repeats flags must be >= 1')
    if args.feat_n <= args.k:
        p.error(f'--feat_n must be larger than --k={args.k}')
    if args.feat_dim < 2:
        p.error('--feat_dim must be >= 2')
    if args.amp == 'fp16' and torch.device(args.device).type == 'cpu':
        p.error('--amp fp16 is for CUDA; use bf16 on CPU')
    return args


# ----------------------------------------------------------------------------------------------
# machine, timing and memory
# ----------------------------------------------------------------------------------------------
def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'
    return (f'{cpu_model()}, {cores} CPU cores ({torch.get_num_threads()} torch thread(s)), '
            f'torch {torch.__version__}, numpy {np.__version__}, device {dev.type} ({name})')


def _read_status_kb(key):
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Memory:
    """Peak memory over a measurement: CUDA allocator peak, or the process' peak RSS."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == 'cuda'
        self.device = device
        self.can_reset = False
        if not self.cuda:
            self.can_reset = self._reset_hwm() and _read_status_kb('VmHWM') is not None

    @staticmethod
    def _reset_hwm():
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # reset the peak RSS to the current RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    def start(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.can_reset:
            self._reset_hwm()

    def peak(self):
        """Peak bytes since `start` (process-wide peak so far if it cannot be reset)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        if self.can_reset:
            return _read_status_kb('VmHWM')
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def label(self):
        if self.cuda:
            return 'CUDA max_memory_allocated'
        return 'peak RSS' if self.can_reset else 'process peak RSS so far (*)'


def sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def measure(fns, repeats, device, memory, warmup=1):
    """Time the callables `fns` interleaved (f1, f2, ..., f1, f2, ...), so a changing background
    load on shared cores hits them alike. Returns [(median seconds of `repeats` calls after
    `warmup` calls, peak bytes over the timed calls)] in the order of `fns`."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync(device)
    times = [[] for _ in fns]
    peaks = [0] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            memory.start()
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[i].append(time.perf_counter() - t0)
            peaks[i] = max(peaks[i], memory.peak())
    return [(statistics.median(t), p) for t, p in zip(times, peaks)]


def fmt_time(s):
    if s is None:
        return 'n/a'
    if s < 1e-3:
        return f'{s * 1e6:.0f} us'
    if s < 1:
        return f'{s * 1e3:.1f} ms'
    return f'{s:.2f} s'


def fmt_mem(b):
    if b is None:
        return 'n/a'
    if b >= GiB:
        return f'{b / GiB:.2f} GiB'
    return f'{b / 1024 ** 2:.0f} MiB'


# ----------------------------------------------------------------------------------------------
# the benchmarks
# ----------------------------------------------------------------------------------------------
def build_model(args):
    return UNet(args.T, args.ch, args.ch_mult, args.attn, args.num_res_blocks, args.dropout,
                cond=True, num_class=NUM_CLASS).to(args.device)


def train_step_fn(args, model, mode, amp, batched, sdpa):
    """One training step as train.py does it (autocast loss, backward, clip, Adam step)."""
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(args.seed)
    x_0 = (torch.rand(args.batch, 3, args.img_size, args.img_size, generator=g) * 2 - 1).to(dev)
    y_0 = torch.randint(NUM_CLASS, (args.batch,), generator=g).to(dev)
    # p_uncond = 0: every step does the full work of its mode (a dropped batch skips the cb pass)
    trainer = GaussianDiffusionTrainer(model, BETA_1, BETA_T, args.T, num_class=NUM_CLASS,
                                       cfg=(mode == 'cfg'), cb=(mode == 'cb'), p_uncond=0.0,
                                       batched=batched).to(dev)
    optim = torch.optim.Adam(model.parameters(), lr=2e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=(amp == 'fp16'))

    def step():
        model.set_sdpa(sdpa)
        model.train()
        with autocast(dev, amp):
            loss_ddpm, loss_reg = trainer(x_0, y_0)
            loss = loss_ddpm.mean() + loss_reg.mean()
        optim.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optim)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optim)
        scaler.update()
    return step


def sample_step_fn(args, model, method, amp, batched):
    """One DDPM sampling step (network + posterior update) at a mid-schedule t."""
    dev = torch.device(args.device)
    sampler = GaussianDiffusionSampler(model, BETA_1, BETA_T, args.T, NUM_CLASS, args.img_size,
                                       batched=batched, amp=amp).to(dev)
    g = torch.Generator().manual_seed(args.seed + 1)
    x_t = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g).to(dev)
    y = torch.randint(NUM_CLASS, (args.batch,), generator=g).to(dev)
    t = torch.full((args.batch,), args.T // 2, dtype=torch.long, device=dev)

    @torch.no_grad()
    def step():
        model.set_sdpa(True)
        model.eval()
        mean, log_var = sampler.p_mean_variance(x_t, t, y, args.omega, method)
        return mean + torch.exp(0.5 * log_var) * torch.randn_like(x_t)
    return step


def guided_sampling(args, model, sampler, seed):
    """A closure sampling `--sample_batch` images with cfg guidance from fixed x_T and labels,
    the step noise drawn per image as evaluation.generate draws it (samplers.ImageNoise)."""
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(args.sample_batch, 3, args.img_size, args.img_size, generator=g).to(dev)
    y = torch.randint(NUM_CLASS, (args.sample_batch,), generator=g).to(dev)

    def run():
        model.set_sdpa(True)
        model.eval()
        noise = ImageNoise(seed, range(args.sample_batch))
        return sampler(x_T, omega=args.omega, method='cfg', y=y, noise=noise)
    return run


def full_sample_fn(args, model, sampler_kind, amp, batched):
    """Sample `--sample_batch` images with cfg guidance from x_T to x_0."""
    sampler = GaussianDiffusionSampler(model, BETA_1, BETA_T, args.full_sample_T, NUM_CLASS,
                                       args.img_size, sampler=sampler_kind,
                                       sample_steps=args.sample_steps, batched=batched,
                                       amp=amp).to(torch.device(args.device))
    return guided_sampling(args, model, sampler, args.seed + 2)


def throughput_settings(args):
    """(row label, samplers.SamplerSettings) of the fast rows of the throughput table: every
    fast sampler in --fast_steps steps at its auto spacing, then the recommended setting
    (samplers.RECOMMENDED, its steps capped at --T as `--sampler auto` caps them)."""
    clip = args.clip_denoised == 'on'
    rows = [(kind, resolve(kind, args.fast_steps, 'auto', 0.0, clip, 'sample', T=args.T))
            for kind in FAST_SAMPLERS]
    rec = RECOMMENDED
    eta = f', eta {rec["eta"]:g}' if rec['sampler'] == 'ddim' else ''
    rows.append((f'auto = {rec["sampler"]} {rec["spacing"]}{eta}',
                 resolve('auto', args.fast_steps, 'auto', 0.0, None, 'sample', T=args.T)))
    return rows


def fast_sampler(args, model, settings):
    """The sampler of `settings` over the model (--T schedule, --amp, batched guidance)."""
    return GaussianDiffusionSampler(
        model, BETA_1, BETA_T, args.T, NUM_CLASS, args.img_size, sampler=settings.sampler,
        sample_steps=settings.sample_steps, eta=settings.eta, spacing=settings.spacing,
        clip_denoised=settings.clip_denoised, amp=args.amp).to(torch.device(args.device))


def forward_flops(args, model):
    """FLOPs of one network evaluation of one image (torch's FlopCounterMode: matmuls,
    convolutions, attention)."""
    dev = torch.device(args.device)
    x = torch.randn(1, 3, args.img_size, args.img_size, device=dev)
    t, y = torch.full((1,), args.T // 2, device=dev), torch.zeros(1, dtype=torch.long, device=dev)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, y=y)
    return counter.get_total_flops()


def fmt_gflop(g):
    return f'{g:,.0f}' if g >= 100 else f'{g:.3g}'


def fmt_duration(s):
    if s < 120:
        return f'{s:.0f} s'
    if s < 7200:
        return f'{s / 60:.0f} min'
    return f'{s / 3600:.1f} h'


def bench_samplers(args, model, memory, ddpm):
    """Images per second of each sampler (cfg, `--amp`, batched) and its speed-up over guided
    DDPM; `ddpm` is the (seconds, bytes) of the `--full_sample_T`-step DDPM run of the
    full-sample rows. Returns markdown lines."""
    n, dev = args.sample_batch, args.device
    fast = [(label, fast_sampler(args, model, settings))
            for label, settings in throughput_settings(args)]
    # one warm-up run each: a 20-step sample is short enough for first-call costs to show
    results = measure([guided_sampling(args, model, sampler, args.seed + 3) for _, sampler in fast],
                      args.sample_repeats, dev, memory, warmup=1)
    ddpm_sampler = GaussianDiffusionSampler(model, BETA_1, BETA_T, args.T, NUM_CLASS,
                                            args.img_size)
    ddpm_sec = ddpm[0] * args.T / args.full_sample_T
    rows = [('ddpm', ddpm_sampler.settings('cfg', args.omega), ddpm_sec)]
    rows += [(label, sampler.settings('cfg', args.omega), sec)
             for (label, sampler), (sec, _) in zip(fast, results)]
    gflop = forward_flops(args, model) / 1e9
    lines = [f'| sampler (cfg, {args.amp}, batched) | steps | clip | '
             f'network GFLOP per image (all steps) | time per step (batch {n}) | images/s | '
             f'speed-up over ddpm | {N_EVAL_IMAGES:,} images |',
             '|---|---:|---|---:|---:|---:|---:|---:|']
    for label, settings, sec in rows:
        per_s = n / sec
        steps = settings['sample_steps']
        lines.append(f'| {label} | {steps} | {"on" if settings["clip_denoised"] else "off"} | '
                     f'{fmt_gflop(settings["nfe_per_image"] * gflop)} | '
                     f'{fmt_time(sec / steps)} | {per_s:.3g} | {ddpm_sec / sec:.1f}x | '
                     f'{fmt_duration(N_EVAL_IMAGES / per_s)} |')
    lines += ['', f'- throughput: one network evaluation of one image is {gflop:.3f} GFLOP; cfg '
              f'evaluates it twice per step (as one batch of {2 * n}); DDPM (unclipped, the '
              f'paper\'s setting) timed over {args.full_sample_T} steps and scaled to {args.T}'
              + ('' if args.full_sample_T == args.T else ' (time is linear in the steps)')
              + f'; speed-up = DDPM time / the row\'s time for the same guided batch; '
              f'{N_EVAL_IMAGES:,} images = {N_EVAL_IMAGES:,} / images/s on this device at '
              f'batch {n} (larger batches are faster per image on a GPU).']
    return lines


def random_features(n, d, seed, shift=0.0, scale=1.0):
    """n x d float32 features (generated in float32: 50k x 2048 is 400 MB)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if scale != 1.0:
        x.mul_(scale)
    if shift:
        x.add_(shift)
    return x.numpy()


def brute_force_pr(ref, ev, k):
    """Improved precision/recall with full N x N float64 distance matrices in numpy."""
    ref = np.asarray(ref, np.float64)
    ev = np.asarray(ev, np.float64)

    def sq_dists(a, b):
        d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.maximum(d, 0, out=d)

    def radii2(x):
        d = sq_dists(x, x)
        np.fill_diagonal(d, 0)
        return np.partition(d, k, axis=1)[:, k]

    r_ref, r_ev = radii2(ref), radii2(ev)
    d = sq_dists(ev, ref)
    precision = float((d <= r_ref[None, :]).any(axis=1).mean())
    recall = float((d <= r_ev[:, None]).any(axis=0).mean())
    return precision, recall


class Table:
    HEADER = ('benchmark', 'baseline', 'time', 'peak mem', 'optimised', 'time', 'peak mem',
              'ratio')

    def __init__(self):
        self.rows = []

    def add(self, name, base_desc, base, opt_desc, opt):
        """base / opt: (seconds, bytes) or None (not run)."""
        bt, bm = base if base else (None, None)
        ot, om = opt if opt else (None, None)
        ratio = f'{bt / ot:.2f}x' if bt and ot else 'n/a'
        row = (name, base_desc, fmt_time(bt), fmt_mem(bm), opt_desc, fmt_time(ot), fmt_mem(om),
               ratio)
        self.rows.append(row)
        print('  ' + ' | '.join(row), file=sys.stderr, flush=True)

    def markdown(self):
        lines = ['| ' + ' | '.join(self.HEADER) + ' |',
                 '|' + '|'.join(['---'] * 2 + ['---:'] * 2 + ['---'] + ['---:'] * 3) + '|']
        lines += ['| ' + ' | '.join(r) + ' |' for r in self.rows]
        return '\n'.join(lines)


def bench_model(args, table, memory):
    model = build_model(args)
    amp, dev = args.amp, args.device
    R = args.repeats
    b = args.batch
    notes = []

    # (a) training steps (each measurement has its own Adam; they share the model)
    for mode in ('plain', 'cfg', 'cb'):
        two_pass = mode == 'cb'
        base, opt = measure([
            train_step_fn(args, model, mode, 'none', batched=not two_pass, sdpa=not two_pass),
            train_step_fn(args, model, mode, amp, batched=True, sdpa=True)], R, dev, memory)
        flag = {'plain': ' plain', 'cfg': ' --cfg', 'cb': ' --cb'}[mode]
        table.add(f'train step{flag} (batch {b})',
                  'fp32, 2 passes, explicit attn' if two_pass else 'fp32', base,
                  f'{amp}, 1 batched pass, SDPA' if two_pass else amp, opt)

    # (b) one sampling step
    for method in ('cond', 'cfg'):
        base, opt = measure([sample_step_fn(args, model, method, 'none', batched=False),
                             sample_step_fn(args, model, method, amp, batched=True)],
                            R, dev, memory)
        table.add(f'sampling step {method} (batch {b})',
                  'fp32' + (', 2 passes' if method == 'cfg' else ''), base,
                  amp + (', batched' if method == 'cfg' else ''), opt)

    # (c) a full sample of a batch with cfg guidance (long: no warm-up, the steps warm up)
    S, T, n = args.sample_repeats, args.full_sample_T, args.sample_batch
    base, ddpm, ddim = measure([full_sample_fn(args, model, 'ddpm', 'none', batched=False),
                                full_sample_fn(args, model, 'ddpm', amp, batched=True),
                                full_sample_fn(args, model, 'ddim', amp, batched=True)],
                               S, dev, memory, warmup=0)
    base_desc = f'DDPM {T} steps, fp32, 2 passes'
    table.add(f'full cfg sample (batch {n})', base_desc, base, f'DDPM {T} steps, {amp}, batched',
              ddpm)
    table.add(f'full cfg sample (batch {n})', base_desc, base,
              f'DDIM {args.sample_steps} steps, {amp}, batched', ddim)
    if T < args.T:
        scale = args.T / T
        notes.append(f'full samples use a {T}-step schedule; DDPM time is linear in the steps, so '
                     f'at T = {args.T} the baseline would take ~{fmt_time(base[0] * scale)} and '
                     f'DDPM {amp} batched ~{fmt_time(ddpm[0] * scale)}, against DDIM '
                     f'{round(args.sample_steps * scale)} steps ~{fmt_time(ddim[0] * scale)} '
                     f'(same step ratio as shown)')
    throughput = bench_samplers(args, model, memory, ddpm)
    del model
    return notes, throughput


def bench_metrics(args, table, memory):
    n, d, k = args.feat_n, args.feat_dim, args.k
    ref = random_features(n, d, args.seed + 10)
    ev = random_features(n, d, args.seed + 11, shift=0.02, scale=1.05)
    notes = []
    R = args.metric_repeats
    dev = args.device
    on_cpu = torch.device(dev).type == 'cpu'
    result = {}

    def store(key, fn):
        return lambda: result.__setitem__(key, fn())

    # the baselines are CPU numpy/scipy whatever --device is: timed together with the optimised
    # path (interleaved) on CPU, separately with their own RSS measurement on CUDA
    def pair(base_fn, opt_fn):
        if on_cpu:
            return measure([base_fn, opt_fn], R, dev, memory, warmup=0)
        base, = measure([base_fn], R, 'cpu', Memory('cpu'), warmup=0)
        opt, = measure([opt_fn], R, dev, memory, warmup=1)
        return base, opt

    fast = store('fast', lambda: M.improved_precision_recall(ref, ev, k=k, device=dev))
    if n <= args.brute_max:
        base, opt = pair(store('brute', lambda: brute_force_pr(ref, ev, k)), fast)
        fp, fr = result['fast']
        bp, br = result['brute']
        notes.append(f'improved P/R on {n} features: chunked (precision, recall) = ({fp:.4f}, '
                     f'{fr:.4f}), brute force float64 = ({bp:.4f}, {br:.4f})')
    else:
        base = None
        opt, = measure([fast], R, dev, memory, warmup=0)
    table.add(f'improved P/R, k={k} ({n} x {n} x {d})',
              'numpy float64, full N x N matrices' if base else
              f'n/a (brute force only for --feat_n <= {args.brute_max})', base,
              f'torch float32 chunked ({dev})', opt)

    mu1, s1 = M.feature_stats(ref)
    mu2, s2 = M.feature_stats(ev)
    base, opt = pair(store('fid_np', lambda: M.frechet_distance(mu1, s1, mu2, s2)),
                     store('fid_t', lambda: M.frechet_distance_torch(mu1, s1, mu2, s2,
                                                                     device=dev)))
    notes.append(f'FID on {n} x {d} statistics: scipy {result["fid_np"]:.6f}, '
                 f'torch {result["fid_t"]:.6f}')
    table.add(f'FID distance (D={d}, given statistics)', 'scipy sqrtm (pytorch-fid), float64',
              base, f'torch eigh, float64 ({dev})', opt)
    return notes


def bench_full_metrics(args, memory):
    """Improved P/R and the FID statistics on 50k x 50k x 2048 features: time and peak RSS."""
    dev = args.device
    rss = Memory('cpu')
    lines = []
    ref = random_features(FULL_N, FULL_DIM, args.seed + 20)
    ev = random_features(FULL_N, FULL_DIM, args.seed + 21, shift=0.02, scale=1.05)
    for label, fn in (
            ('improved precision/recall', lambda: M.improved_precision_recall(
                ref, ev, k=args.k, device=dev)),
            ('FID statistics + distance', lambda: M.frechet_distance_torch(
                *M.feature_stats(ref), *M.feature_stats(ev), device=dev))):
        print(f'full scale: {label} ...', file=sys.stderr, flush=True)
        rss.start()
        if memory.cuda:
            memory.start()
        t0 = time.perf_counter()
        value = fn()
        sync(dev)
        sec = time.perf_counter() - t0
        peak = rss.peak()
        gpu = f', CUDA peak {fmt_mem(memory.peak())}' if memory.cuda else ''
        ok_t = 'within' if sec < FULL_TIME_BUDGET_S else 'OVER'
        ok_m = 'within' if peak < FULL_RAM_BUDGET else 'OVER'
        if isinstance(value, tuple):
            value = ', '.join(f'{v:.4f}' for v in value)
        else:
            value = f'{value:.4f}'
        lines.append(f'| {label} ({FULL_N} x {FULL_N} x {FULL_DIM}, {dev}) | {fmt_time(sec)} '
                     f'({ok_t} {FULL_TIME_BUDGET_S // 60} min) | {fmt_mem(peak)} ({ok_m} '
                     f'{FULL_RAM_BUDGET // GiB} GiB){gpu} | {value} |')
    header = ['| full-scale metric | time | peak RSS (process) | value |',
              '|---|---:|---:|---|']
    return '\n'.join(header + lines)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        try:  # numpy / scipy BLAS (the metric baselines) on as many threads as torch
            from threadpoolctl import threadpool_limits
            threadpool_limits(limits=args.threads)
        except ImportError:  # pragma: no cover
            pass
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    if torch.device(args.device).type == 'cuda':
        torch.backends.cudnn.benchmark = True
    memory = Memory(args.device)
    machine = machine_line(args.device)
    print(f'machine: {machine}', file=sys.stderr, flush=True)
    t_start = time.perf_counter()

    table = Table()
    notes, throughput = bench_model(args, table, memory)
    notes += bench_metrics(args, table, memory)
    full = bench_full_metrics(args, memory) if args.full_metrics else None

    attn = ' '.join(map(str, args.attn)) or 'none'
    out = [
        f'Machine: {machine}',
        '',
        f'Model: ch {args.ch}, ch_mult {" ".join(map(str, args.ch_mult))}, attn {attn}, '
        f'num_res_blocks {args.num_res_blocks}, img {args.img_size}, T {args.T}, '
        f'{NUM_CLASS} classes; batch {args.batch}; median of {args.repeats} runs after a warm-up '
        f'({args.sample_repeats} for full samples and {args.metric_repeats} for metrics, without '
        f'warm-up); baseline and optimised runs interleaved; cfg omega {args.omega}.',
        '',
        table.markdown(),
        '',
        f'- ratio = baseline time / optimised time; peak memory = {memory.label()} during the '
        f'timed runs of each figure.',
        '- training steps: forward + backward + clip + Adam, with p_uncond = 0 so every step does '
        'the full work of its mode; plain = conditional without label dropout.',
    ]
    out += ['- ' + note for note in notes]
    out += [''] + throughput
    if full:
        out += ['', full]
    out += ['', f'Total bench time: {time.perf_counter() - t_start:.0f} s.']
    text = '\n'.join(out) + '\n'
    print(text, end='')
    if args.out:
        save_text(args.out, text)


if __name__ == '__main__':
    main()
