"""Checkpoints: naming, atomic saving, listing, robust loading and shape diagnostics.

A checkpoint `LOGDIR/ckpt_{step}.pt` is a dict with the reference's keys `net_model`,
`ema_model`, `sched`, `optim`, `step`, `fixed_x_T`, plus ours: `rng` (all RNG states, for exact
resumption), `scaler` (fp16 gradient scaler), `fixed_y` (labels of the sample grid) and
`class_counts` (training images per class, np.int64 [num_class]; absent from checkpoints written
before it was recorded), so that sampling from a checkpoint needs no data set.
"""
import glob
import os
import re

import numpy as np
import torch

from utils import UserError, save_torch

CKPT_RE = re.compile(r'^ckpt_(\d+)\.pt$')


def ckpt_path(logdir, step):
    return os.path.join(logdir, f'ckpt_{step}.pt')


def list_checkpoints(logdir):
    """[(step, path)] of the periodic checkpoints in `logdir`, oldest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(logdir), 'ckpt_*.pt')):
        m = CKPT_RE.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def load_checkpoint(path, flag='ckpt_step'):
    """torch.load on CPU; a missing, truncated or foreign file is a UserError."""
    if not os.path.isfile(path):
        logdir = os.path.dirname(path) or '.'
        steps = [s for s, _ in list_checkpoints(logdir)] if os.path.isdir(logdir) else []
        present = ', '.join(map(str, steps)) if steps else 'none'
        raise UserError(f'--{flag}: checkpoint {path} does not exist (steps present in '
                        f'{logdir}: {present})')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, ...
        raise UserError(f'checkpoint {path} is truncated or not a checkpoint '
                        f'({type(e).__name__}); delete it or pick another --{flag}') from None
    if not isinstance(ckpt, dict) or 'net_model' not in ckpt or 'ema_model' not in ckpt:
        raise UserError(f'{path} is not a training checkpoint (no net_model/ema_model); '
                        f'pick another --{flag}')
    return ckpt


def save_checkpoint(state, logdir, step, keep=0, protect=()):
    """Write ckpt_{step}.pt atomically; with keep > 0 delete all but the newest `keep`
    periodic checkpoints (never those in `protect`)."""
    path = ckpt_path(logdir, step)
    save_torch(state, path)
    if keep > 0:
        for old_step, old_path in list_checkpoints(logdir)[:-keep]:
            if old_step not in protect and old_path != path:
                os.remove(old_path)
    return path


def recorded_class_counts(ckpt):
    """Training images per class (np.int64 [num_class]) recorded in the checkpoint dict, or None
    for one written before they were recorded."""
    counts = ckpt.get('class_counts')
    return None if counts is None else np.asarray(counts, np.int64)


def recorded_num_class(ckpt):
    """The run's number of classes as its checkpoint dict records it: the rows of a conditional
    model's label embedding, else the length of the recorded class counts; None when neither is
    there (an unconditional model saved before the counts were recorded)."""
    state = ckpt['ema_model']
    if 'label_embedding.weight' in state:
        return int(state['label_embedding.weight'].shape[0])
    counts = recorded_class_counts(ckpt)
    return None if counts is None else len(counts)


def infer_flags(state_dict):
    """The model flags a UNet state_dict was built with, as a command-line string."""
    sd = state_dict
    ch = sd['head.weight'].shape[0]
    down = sorted({int(k.split('.')[1]) for k in sd if k.startswith('downblocks.')})
    ch_mult, attn, blocks_per_level, level, count = [], [], None, 0, 0
    for i in down:
        if f'downblocks.{i}.main.weight' in sd:  # a DownSample closes a level
            blocks_per_level = count
            level, count = level + 1, 0
            continue
        out_ch = sd[f'downblocks.{i}.block1.2.weight'].shape[0]
        if count == 0:
            ch_mult.append(out_ch // ch)
            if f'downblocks.{i}.attn.proj.weight' in sd:
                attn.append(level)
        count += 1
    blocks_per_level = blocks_per_level or count
    parts = [f'--ch {ch}'] + [f'--ch_mult {m}' for m in ch_mult]
    parts += [f'--attn {a}' for a in attn] or ['--attn -1']
    parts.append(f'--num_res_blocks {blocks_per_level}')
    parts.append(f'--T {sd["time_embedding.timembedding.0.weight"].shape[0]}')
    if 'label_embedding.weight' in sd:
        parts.append(f'--conditional (num_class {sd["label_embedding.weight"].shape[0]})')
    else:
        parts.append('--noconditional')
    parts.append('--augm' if 'augm_embedding.weight' in sd else '--noaugm')
    return ' '.join(parts)


def load_model_state(model, state_dict, path):
    """load_state_dict(strict=True), turning a layout mismatch into a UserError that names the
    first mismatching keys and the flags the checkpoint was built with."""
    own = model.state_dict()
    problems = []
    for key in own:
        if key not in state_dict:
            problems.append(f'{key} missing')
        elif own[key].shape != state_dict[key].shape:
            problems.append(f'{key} {tuple(state_dict[key].shape)} vs model '
                            f'{tuple(own[key].shape)}')
    problems += [f'{key} unexpected' for key in state_dict if key not in own]
    if problems:
        try:
            hint = infer_flags(state_dict)
        except Exception:
            hint = 'unknown (not a UNet of this project)'
        raise UserError(f'checkpoint {path} does not fit the model flags: '
                        f'{"; ".join(problems[:3])}; it was built with {hint}')
    model.load_state_dict(state_dict, strict=True)
