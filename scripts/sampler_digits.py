#!/usr/bin/env python
"""Fast samplers against 1,000-step DDPM on a trained digits model, from the same noise.

    python scripts/sampler_digits.py --logdir logs/demo_digitslt_cbdm --ckpt_step 2499 \
        [--per_class 100] [--omega 1.0] [--steps 10,20,50] [--samplers ddim,dpm++2m,unipc] \
        [--stochastic_ddim] [--reuse] [--out docs/sampler_digits.md]

For DDPM (all T steps), each fast sampler at each step count and, with --stochastic_ddim, DDIM
with eta 1 (ancestral noise at every step), `main.py --sample` draws
`10 x per_class` class-conditional images (guided with --omega) from the run's checkpoint, with
the same initial noise and labels every time (seeded). Each set is scored in the feature space
of the small digits classifier of `scripts/proxy_eval.py` (trained once, cached in the run
folder) against the 1,797 real digits:

  FID      Frechet distance of the 128-d penultimate features (generated vs all real digits)
  P, R     improved precision / recall (k = 5) in that space
  acc      fraction of samples the classifier assigns to their conditioning class
  wall     seconds of the `--sample` command (start-up included, the same for every row)

--reuse scores the sets an earlier run saved (LOGDIR/sampler_digits_*.npy) instead of drawing
them again, with the wall times it recorded.

--omega_sweep 0,0.5,1,2,3 instead draws one set per omega with --sweep_sampler (default DDIM,
20 steps, eta 1) and writes the FID / IS / precision / recall / tail-FID table and plot
(score.plots.plot_omega_sweep) beside --out.

Prints a markdown table and writes it atomically to --out (default LOGDIR/sampler_digits.md).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'scripts'))

import proxy_eval  # noqa: E402
from score.metrics import frechet_distance_feats  # noqa: E402
from utils import UserError, run_script, save_text  # noqa: E402


def draw(logdir, ckpt_step, sampler, steps, eta, per_class, omega, batch_size, reuse):
    """Run `main.py --sample` once; returns (samples path, labels path, wall seconds), the files
    renamed after the sampler so that the next run does not overwrite them."""
    tag = os.path.join(logdir, f'sampler_digits_{sampler}_{steps}' + (f'_eta{eta:g}' if eta else '')
                       + f'_omega{omega:g}')
    if reuse and os.path.isfile(tag + '.json'):
        with open(tag + '.json') as f:
            return tag + '.npy', tag + '_labels.npy', json.load(f)['wall']
    cmd = [sys.executable, os.path.join(ROOT, 'main.py'), '--notrain', '--sample',
           f'--flagfile={os.path.join(logdir, "flagfile.txt")}', f'--logdir={logdir}',
           f'--ckpt_step={ckpt_step}', '--sample_method=cfg', f'--omega={omega}',
           f'--sampler={sampler}', f'--sample_steps={steps}', f'--eta={eta}',
           f'--sample_size={10 * per_class}', f'--batch_size={batch_size}']
    start = time.time()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - start
    if out.returncode != 0:
        raise UserError(f'{" ".join(cmd)} failed: {out.stderr.strip().splitlines()[-1]}')
    stem = written_stem(out.stdout)
    shutil.move(stem + '.npy', tag + '.npy')
    shutil.move(stem + '_labels.npy', tag + '_labels.npy')
    save_text(tag + '.json', json.dumps({'wall': wall, 'command': cmd}))
    return tag + '.npy', tag + '_labels.npy', wall


def written_stem(stdout):
    """The path stem of the set `main.py --sample` wrote (its last line names STEM.npy and
    STEM_labels.npy; the stem carries the sampler settings)."""
    paths = [p.strip(',') for p in stdout.strip().splitlines()[-1].split()]
    [labels] = [p for p in paths if p.endswith('_labels.npy')]
    return labels[:-len('_labels.npy')]


def sweep_scores(model, samples, labels, real_feats, real_y, tail):
    """FID, IS (of the classifier's softmax), precision, recall, accuracy and the tail classes'
    FID (generated vs real images of the `tail` classes) of a saved set, as a dict."""
    import torch
    from score.metrics import inception_score
    x, y = proxy_eval.load_samples(samples, labels)
    pred, feats = proxy_eval.predict(model, x)
    with torch.no_grad():
        probs = torch.softmax(model.fc2(torch.from_numpy(feats)), dim=1).double().numpy()
    gen_tail, real_tail = np.isin(y.numpy(), tail), np.isin(real_y, tail)
    precision, recall = proxy_eval.pr(real_feats, feats)
    return {'FID': frechet_distance_feats(feats, real_feats, use_torch=True),
            # the sets are class-sorted: shuffle, or each split would hold one class (IS ~ 1)
            'IS': inception_score(probs[np.random.RandomState(0).permutation(len(probs))],
                                  splits=10)[0],
            'precision': precision, 'recall': recall,
            'acc': float((pred == y.numpy()).mean()),
            'FID_tail': frechet_distance_feats(feats[gen_tail], real_feats[real_tail],
                                               use_torch=True)}


def omega_sweep(args, model, real_feats, real_y):
    """The --omega_sweep mode: one set per omega with the sweep sampler, a table and a plot."""
    from dataset import build_dataset
    from score.plots import plot_omega_sweep
    counts = build_dataset('digitslt', '', 8, 0.1).class_counts
    tail = sorted(int(c) for c in np.argsort(-counts, kind='stable')[5:])
    rows = []
    lines = ['| omega | FID | IS | precision | recall | class acc | tail FID |',
             '|---:|---:|---:|---:|---:|---:|---:|']
    for omega in (float(w) for w in args.omega_sweep.split(',')):
        samples, labels, _ = draw(args.logdir, args.ckpt_step, args.sweep_sampler,
                                  args.sweep_steps, args.sweep_eta, args.per_class, omega,
                                  args.batch_size, args.reuse)
        row = {'omega': omega, **sweep_scores(model, samples, labels, real_feats, real_y, tail)}
        rows.append(row)
        lines.append(f'| {omega:g} | ' + ' | '.join(f'{row[k]:.3f}' for k in (
            'FID', 'IS', 'precision', 'recall', 'acc', 'FID_tail')) + ' |')
        print(lines[-1], flush=True)
    out = args.out or os.path.join(args.logdir, 'omega_sweep_digits.md')
    plot = plot_omega_sweep(rows, out[:-3] + '.png' if out.endswith('.md') else out + '.png')
    best = min(rows, key=lambda r: r['FID'])
    text = (f'{10 * args.per_class} images per omega ({args.per_class} per class), '
            f'{args.sweep_sampler} {args.sweep_steps} steps, eta {args.sweep_eta:g}, the same noise '
            f'and labels for every omega; tail = classes {tail}; best omega by FID: '
            f'{best["omega"]:g}.\n\n' + '\n'.join(lines) + '\n')
    save_text(out, text)
    print(text + f'plot: {plot}')


def score(model, samples, labels, real_feats):
    """(FID, precision, recall, accuracy) of a saved set in the classifier's feature space."""
    x, y = proxy_eval.load_samples(samples, labels)
    pred, feats = proxy_eval.predict(model, x)
    # use_torch: the eigenvalue form, stable where dead ReLU units make covariances singular
    fid = frechet_distance_feats(feats, real_feats, use_torch=True)
    precision, recall = proxy_eval.pr(real_feats, feats)
    return fid, precision, recall, float((pred == y.numpy()).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--logdir', required=True, help='a trained digits run (with flagfile.txt)')
    ap.add_argument('--ckpt_step', type=int, required=True)
    ap.add_argument('--per_class', type=int, default=100)
    ap.add_argument('--omega', type=float, default=1.0)
    ap.add_argument('--steps', default='10,20,50')
    ap.add_argument('--samplers', default='ddim,dpm++2m,unipc')
    ap.add_argument('--stochastic_ddim', action='store_true', help='also DDIM with eta 1')
    ap.add_argument('--reuse', action='store_true', help='score the sets saved by a former run')
    ap.add_argument('--batch_size', type=int, default=500)
    ap.add_argument('--omega_sweep', default='', help='e.g. 0,0.5,1,2,3: sweep omega with the '
                    'sweep sampler instead of comparing samplers')
    ap.add_argument('--sweep_sampler', default='ddim')
    ap.add_argument('--sweep_steps', type=int, default=20)
    ap.add_argument('--sweep_eta', type=float, default=1.0)
    ap.add_argument('--out', default='')
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.logdir, 'flagfile.txt')):
        raise UserError(f'--logdir {args.logdir}: no flagfile.txt (train a digits run first)')
    with open(os.path.join(args.logdir, 'flagfile.txt')) as f:
        T = int(next(line.split('=', 1)[1] for line in f if line.startswith('--T=')))
    steps = [int(n) for n in args.steps.split(',')]
    runs = [('ddpm', T, 0.0)] + [(s, n, 0.0) for s in args.samplers.split(',') for n in steps]
    if args.stochastic_ddim:
        runs += [('ddim', n, 1.0) for n in steps]
    x, y = proxy_eval.real_digits()
    model, test_acc = proxy_eval.load_or_train(args.logdir, 0, x, y)
    _, real_feats = proxy_eval.predict(model, x)
    if args.omega_sweep:
        return omega_sweep(args, model, real_feats, y.numpy())
    lines = ['| sampler | steps | FID (classifier features) | precision | recall | class acc | '
             'wall (s) |', '|---|---:|---:|---:|---:|---:|---:|']
    for sampler, n, eta in runs:
        samples, labels, wall = draw(args.logdir, args.ckpt_step, sampler, n, eta,
                                     args.per_class, args.omega, args.batch_size, args.reuse)
        fid, precision, recall, acc = score(model, samples, labels, real_feats)
        name = f'{sampler}, eta {eta:g}' if eta else sampler
        lines.append(f'| {name} | {n} | {fid:.3f} | {precision:.3f} | {recall:.3f} | '
                     f'{acc:.3f} | {wall:.0f} |')
        print(lines[-1], flush=True)
    text = (f'{10 * args.per_class} images ({args.per_class} per class), cfg omega '
            f'{args.omega}, same noise and labels for every row; classifier held-out accuracy '
            f'{test_acc:.3f}; real set: the {len(x)} digits.\n\n' + '\n'.join(lines) + '\n')
    save_text(args.out or os.path.join(args.logdir, 'sampler_digits.md'), text)
    print(text, end='')


if __name__ == '__main__':
    run_script(main)
