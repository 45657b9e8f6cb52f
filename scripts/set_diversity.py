#!/usr/bin/env python
"""What is in a generated MNIST-LT training set: recognisability, diversity, contrast and
closeness to the real tail images, per set, judged by a classifier none of the sets trained.

    python scripts/set_diversity.py --sets NAME=PATH.npy [NAME=PATH.npy ...] [--img_size 16]
        [--judge_dir logs/mnistlt_cbdm/sampler_table] [--out docs/set_diversity.md]

A set is what --classify writes to RUN/synthetic/: PATH.npy (float32 N x 3 x H x W in [0, 1])
and PATH_labels.npy beside it. The judge is scripts/sampler_table.py's (the small CNN trained on
the balanced 4,000-digit MNIST pool at --img_size, cached in --judge_dir; trained there when
missing); the real reference is the balanced 1,000-digit test split. The tail is the five
classes with the fewest MNIST-LT training images. Columns, per set:

  judge acc     fraction of images the judge assigns to their label (all / tail)
  unsure        fraction whose top judge probability is below 0.5 (noise to the judge)
  P, R          improved precision / recall (k = 5) in the judge's 128-d features against the
                real test split (all; R also for the tail)
  spread        mean over classes of the trace of the class's judge-feature covariance,
                divided by the same for the real test split (1: as varied as real digits)
  pixel std     standard deviation of all pixel values; saturated: fraction of pixels at 0 or 1
  tail NN       mean L2 distance (pixels in [0, 1]) from a tail image to the nearest real
                MNIST-LT training image of its class (a copy of the few real tail images: 0)
"""
import argparse
import os
import sys
import types

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'scripts'))

import proxy_eval  # noqa: E402
import sampler_table  # noqa: E402
from utils import UserError, run_script, save_text  # noqa: E402

NUM_CLASS = 10


def load_set(spec):
    """(name, images float32 N x 3 x H x W in [0, 1], labels int64 N) of NAME=PATH.npy."""
    name, sep, path = spec.partition('=')
    if not sep or not name or not path.endswith('.npy'):
        raise UserError(f'--sets {spec!r}: give NAME=PATH.npy')
    labels_path = path[:-len('.npy')] + '_labels.npy'
    for p in (path, labels_path):
        if not os.path.isfile(p):
            raise UserError(f'--sets {name}: {p} does not exist (a set --classify wrote has '
                            f'NAME.npy and NAME_labels.npy)')
    images = np.load(path).astype(np.float32)
    labels = np.load(labels_path).astype(np.int64)
    if images.ndim != 4 or len(images) != len(labels):
        raise UserError(f'--sets {name}: {path} is {images.shape} with {len(labels)} labels; '
                        f'expected N x C x H x W and N labels')
    return name, images, labels


def class_spread(feats, labels):
    """Mean over the classes present of the trace of the class's feature covariance."""
    traces = [np.trace(np.atleast_2d(np.cov(feats[labels == c], rowvar=False)))
              for c in range(NUM_CLASS) if (labels == c).sum() > 1]
    return float(np.mean(traces))


def nearest_real(images, labels, real, real_labels, classes):
    """Mean L2 distance from each image of `classes` to the nearest real image of its class."""
    dists = []
    for c in classes:
        gen = torch.from_numpy(images[labels == c].reshape((labels == c).sum(), -1))
        ref = torch.from_numpy(real[real_labels == c].reshape((real_labels == c).sum(), -1))
        if len(gen) and len(ref):
            dists.append(torch.cdist(gen, ref).min(1).values)
    return float(torch.cat(dists).mean()) if dists else float('nan')


def set_stats(model, images, labels, ref, real_train, tail):
    """The columns of one set (see the module docstring)."""
    ref_feats, ref_y, ref_spread = ref
    x = torch.from_numpy(images) * 2 - 1
    model.eval()
    with torch.no_grad():   # one pass: features, then the judge's softmax on them
        feats_t = torch.cat([model.features(x[i:i + 512]) for i in range(0, len(x), 512)])
        probs = torch.softmax(model.fc2(feats_t), 1).numpy()
    pred, feats = probs.argmax(1).astype(np.int64), feats_t.numpy().astype(np.float32)
    in_tail = np.isin(labels, tail)
    precision, recall = proxy_eval.pr(ref_feats, feats)
    tail_recall = proxy_eval.pr(ref_feats[np.isin(ref_y, tail)], feats[in_tail])[1]
    return {'n': len(labels), 'acc': float((pred == labels).mean()),
            'acc_tail': float((pred[in_tail] == labels[in_tail]).mean()),
            'unsure': float((probs.max(1) < 0.5).mean()),
            'precision': precision, 'recall': recall, 'recall_tail': tail_recall,
            'spread': class_spread(feats, labels) / ref_spread,
            'pixel_std': float(images.std()),
            'saturated': float(((images <= 0) | (images >= 1)).mean()),
            'tail_nn': nearest_real(images, labels, *real_train, tail)}


COLUMNS = [('n', 'images', '{:d}'), ('acc', 'judge acc', '{:.3f}'),
           ('acc_tail', 'tail acc', '{:.3f}'), ('unsure', 'unsure', '{:.3f}'),
           ('precision', 'P', '{:.3f}'), ('recall', 'R', '{:.3f}'),
           ('recall_tail', 'tail R', '{:.3f}'), ('spread', 'spread', '{:.2f}'),
           ('pixel_std', 'pixel std', '{:.3f}'), ('saturated', 'saturated', '{:.3f}'),
           ('tail_nn', 'tail NN', '{:.2f}')]


def table(rows):
    """Markdown: a row per (name, stats)."""
    lines = ['| set | ' + ' | '.join(title for _, title, _ in COLUMNS) + ' |',
             '|---|' + '---:|' * len(COLUMNS)]
    for name, stats in rows:
        lines.append(f'| {name} | ' + ' | '.join(fmt.format(stats[key])
                                                 for key, _, fmt in COLUMNS) + ' |')
    return '\n'.join(lines) + '\n'


def real_set(ds):
    """(images float32 N x 3 x H x W in [0, 1], labels) of a dataset in [-1, 1]."""
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return ((x + 1) / 2).numpy().astype(np.float32), np.asarray(ds.targets, np.int64)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--sets', nargs='+', required=True, help='NAME=PATH.npy')
    ap.add_argument('--img_size', type=int, default=16)
    ap.add_argument('--judge_dir', default=os.path.join('logs', 'mnistlt_cbdm', 'sampler_table'))
    ap.add_argument('--judge_epochs', type=int, default=sampler_table.JUDGE_EPOCHS)
    ap.add_argument('--out', default='')
    args = ap.parse_args(argv)
    sets = [load_set(spec) for spec in args.sets]
    for name, images, _ in sets:
        if images.shape[-1] != args.img_size:
            raise UserError(f'--sets {name}: {images.shape[-1]}x{images.shape[-1]} images; '
                            f'--img_size is {args.img_size}')
    import dataset as D
    os.makedirs(args.judge_dir, exist_ok=True)
    cfg = types.SimpleNamespace(data_type='mnistlt', img_size=args.img_size)
    model, _, ref_x, ref_y = sampler_table.judge(cfg, args.judge_dir, args.judge_epochs)
    _, ref_feats = proxy_eval.predict(model, ref_x)
    ref_y = ref_y.numpy()
    ref = (ref_feats, ref_y, class_spread(ref_feats, ref_y))
    train = D.build_dataset('mnistlt', '', args.img_size)
    tail = sorted(int(c) for c in np.argsort(-train.class_counts, kind='stable')[5:])
    real_train = real_set(train)
    rows = [(name, set_stats(model, images, labels, ref, real_train, tail))
            for name, images, labels in sets]
    text = table(rows)
    print(text, end='')
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        save_text(args.out, text)
        print(f'wrote {args.out}')


if __name__ == '__main__':
    run_script(main)
