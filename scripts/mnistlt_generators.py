#!/usr/bin/env python
"""Head against tail: per-class quality of the MNIST-LT DDPM and CBDM models, judged by a
classifier that neither model saw, with a sample grid of each.

    python scripts/mnistlt_generators.py [--runs DDPM=logs/mnistlt_ddpm,CBDM=logs/mnistlt_cbdm]
        [--ckpt_step 4999] [--per_class 100] [--seed 0] [--sampler ddim-eta1] [--steps 50]
        [--noclip] [--out docs/mnistlt_generators.md]

Each run's EMA model draws `per_class` images of every class (cfg guidance at the run's
--omega; per-image seeded noise, the same labels and seed for every run) with the chosen
sampler through the project's own sampling code (scripts/sampler_table.py's `draw`). The judge
is scripts/sampler_table.py's: the proxy CNN trained on the balanced 4,000-digit MNIST pool;
the real reference is the balanced 1,000-digit test split (100 per class) that neither the
generators nor the judge were trained on. Per class, for the head (the five classes with the
most training images), the tail (the other five) and all:

  acc        fraction of samples the judge assigns to their label
  FID        Fréchet distance of the judge's 128-d penultimate features, generated class(es) vs
             real class(es) (per class: 100 vs per_class images; score.metrics's exact
             low-rank form when a set is smaller than 128)
  P, R       improved precision / recall (k = 5) in the same features

Writes the markdown table to --out and a grid per run (10 images per class, a row per class)
to OUT_<name>.png; sets and scores are cached in each run's sampler_table/ folder.
"""
import argparse
import math
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'scripts'))

import proxy_eval  # noqa: E402
import sampler_table  # noqa: E402
from score.metrics import frechet_distance_feats  # noqa: E402
from utils import UserError, atomic_write, run_script, save_npz, save_text  # noqa: E402

NUM_CLASS = 10


def group_scores(pred, feats, labels, ref_feats, ref_y, groups):
    """{row: {'acc', 'FID', 'precision', 'recall'}} for every class and group of classes."""
    out = {}
    for row, classes in [(str(c), [c]) for c in range(NUM_CLASS)] + list(groups.items()):
        g, r = np.isin(labels, classes), np.isin(ref_y, classes)
        precision, recall = proxy_eval.pr(ref_feats[r], feats[g])
        out[row] = {'acc': float((pred[g] == labels[g]).mean()),
                    'FID': frechet_distance_feats(ref_feats[r], feats[g]),
                    'precision': precision, 'recall': recall}
    return out


def save_grid(images, labels, path, per_row=10):
    """The first `per_row` images of every class, a row per class, enlarged 4x."""
    from torchvision.utils import make_grid
    from PIL import Image
    # fewer images a class than per_row: shorter rows, so that each row stays one class
    per_row = min(per_row, *(int((labels == c).sum()) for c in range(NUM_CLASS)))
    picks = np.concatenate([np.flatnonzero(labels == c)[:per_row] for c in range(NUM_CLASS)])
    grid = make_grid(torch.from_numpy(images[picks]), nrow=per_row, pad_value=1.0)
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(array)
    image = image.resize((image.width * 4, image.height * 4), Image.NEAREST)
    with atomic_write(path) as f:
        image.save(f, format='png')


def fmt(v, digits=3):
    return '-' if v is None or math.isnan(v) else f'{v:.{digits}f}'


def table(results, counts, groups, setting, judge_acc, per_class):
    names = list(results)
    head = ['class', 'train imgs'] + [f'{n} {m}' for n in names
                                      for m in ('acc', 'FID', 'P', 'R')]
    lines = [f'{per_class} images per class per model, {setting}; judge: the proxy CNN trained '
             f'on the 4,000-digit MNIST pool (test-split accuracy {judge_acc:.3f}); FID, '
             f'precision (P) and recall (R, k = 5) in its 128-d features against the 1,000 '
             f'held-out test digits (100 per class).', '',
             '| ' + ' | '.join(head) + ' |', '|---|---:|' + '---:|' * (len(head) - 2)]
    rows = [(str(c), str(int(counts[c]))) for c in range(NUM_CLASS)]
    rows += [(g, f'{int(sum(counts[c] for c in cl))}') for g, cl in groups.items()]
    for row, count in rows:
        cells = [f'**{row}**' if row in groups else row, count]
        for n in names:
            r = results[n][row]
            cells += [fmt(r['acc']), fmt(r['FID'], 2), fmt(r['precision']), fmt(r['recall'])]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def parse_runs(spec):
    runs = {}
    for item in spec.split(','):
        if '=' not in item:
            raise UserError(f'--runs {item!r}: expected NAME=LOGDIR')
        name, logdir = item.split('=', 1)
        if not os.path.isfile(os.path.join(logdir, 'flagfile.txt')):
            raise UserError(f'--runs {name}={logdir}: no flagfile.txt there (train the run first)')
        runs[name] = logdir
    return runs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--runs', default='DDPM=logs/mnistlt_ddpm,CBDM=logs/mnistlt_cbdm')
    ap.add_argument('--ckpt_step', type=int, default=4999)
    ap.add_argument('--per_class', type=int, default=100)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--sampler', default='ddim-eta1', choices=list(sampler_table.SAMPLERS) +
                    ['ddpm'])
    ap.add_argument('--steps', type=int, default=50)
    ap.add_argument('--noclip', action='store_true', help='do not clip x0 inside the loop')
    ap.add_argument('--batch_size', type=int, default=500)
    ap.add_argument('--judge_epochs', type=int, default=sampler_table.JUDGE_EPOCHS)
    ap.add_argument('--out', default=os.path.join('docs', 'mnistlt_generators.md'))
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get('OMP_NUM_THREADS', '1') or 1)))
    clip = not args.noclip
    labels = np.repeat(np.arange(NUM_CLASS), args.per_class).astype(np.int64)
    results, setting = {}, ''
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for name, logdir in parse_runs(args.runs).items():
        cfg = sampler_table.run_config(logdir, args.ckpt_step, [])
        steps = cfg.T if args.sampler == 'ddpm' else args.steps
        cache_dir = os.path.join(logdir, 'sampler_table')
        os.makedirs(cache_dir, exist_ok=True)
        judge, judge_acc, ref_x, ref_y = sampler_table.judge(cfg, cache_dir,
                                                                   args.judge_epochs)
        _, ref_feats = proxy_eval.predict(judge, ref_x)
        ref_y = ref_y.numpy()
        import dataset as D
        counts = D.build_dataset(cfg.data_type, '', cfg.img_size, cfg.imb_factor,
                                 cfg.imb_type).class_counts
        order = np.argsort(-counts, kind='stable')
        groups = {'head': sorted(int(c) for c in order[:5]),
                  'tail': sorted(int(c) for c in order[5:]), 'all': list(range(NUM_CLASS))}
        key = (f'{args.sampler}_{steps}_clip{int(clip)}_omega{cfg.omega:g}_n{len(labels)}_'
               f'seed{args.seed}')
        path = os.path.join(cache_dir, key + '.npz')
        if not os.path.isfile(path):
            images, _, _ = sampler_table.draw(cfg, args.sampler, steps, clip, args.seed, labels,
                                              args.batch_size)
            save_npz(path, images=(images * 255).round().astype(np.uint8), labels=labels)
        with np.load(path) as z:
            images = z['images'].astype(np.float32) / 255
        pred, feats = proxy_eval.predict(judge, torch.from_numpy(images) * 2 - 1)
        results[name] = group_scores(pred, feats, labels, ref_feats, ref_y, groups)
        grid = f'{os.path.splitext(args.out)[0]}_{name}.png'
        save_grid(images, labels, grid)
        setting = (f'{args.sampler} {steps} steps, x0 clip {"on" if clip else "off"}, cfg '
                   f'omega {cfg.omega:g}, seed {args.seed}, ckpt {args.ckpt_step}')
        print(f'{name}: acc head {results[name]["head"]["acc"]:.3f} tail '
              f'{results[name]["tail"]["acc"]:.3f}; grid {grid}', flush=True)
    text = table(results, counts, groups, setting, judge_acc, args.per_class)
    save_text(args.out, text)
    print(text, end='')


if __name__ == '__main__':
    run_script(main)
