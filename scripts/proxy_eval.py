#!/usr/bin/env python
"""Per-class / head / tail figures of generated digits that need no downloaded weights.

    python scripts/proxy_eval.py --log_root LOG_ROOT --samples DDPM=A.npy --samples CBDM=B.npy \
        [--out TABLE.md] [--json RESULTS.json] [--seed 0]

A small CNN is trained (seeded, deterministic) on the full balanced scikit-learn digits (1797
images, 8x8, 3 channels in [-1, 1]); a seeded 20% is held out and its accuracy reported. The
classifier is cached in LOG_ROOT/proxy_classifier.pt, reused while its seed and architecture
match (arch_key: ARCH and a hash of the code of DigitNet and of its training, so that a cache of
another network is retrained, never loaded into this one). For each sample set (float
N x 3 x 8 x 8 in [0, 1]; labels from A_labels.npy beside A.npy, or NAME=A.npy,LABELS.npy) it
computes

  acc        fraction of samples the classifier assigns to their conditioning label
  precision, recall   improved precision / recall (k = 5, score.metrics) in the classifier's
             penultimate-layer feature space against the balanced real digits (all 1797);
             per class: generated class c against real class c; per group: generated classes
             of the group against real classes of the group

per class, for the head (the 5 classes with most training images in digits-LT, 0-4), the tail
(5-9) and all. Prints a markdown table (classes with their digits-LT training counts, then
head / tail / all; per model: acc, P, R) and writes it atomically to --out.
"""
import argparse
import hashlib
import inspect
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dataset import build_dataset, build_reference_dataset  # noqa: E402
from score.metrics import improved_precision_recall  # noqa: E402
from utils import UserError, run_script, save_text, save_torch  # noqa: E402

ARCH = 'proxy-cnn-v1'
NUM_CLASS = 10
IMG_SIZE = 8
K = 5
CACHE_NAME = 'proxy_classifier.pt'


class DigitNet(nn.Module):
    """3 x S x S -> 10 logits (S = img_size, a multiple of 4; 8 for the digits); `features` is
    the 128-d penultimate layer (after ReLU).

    Not the recognition CNN (recognition.models.SmallCNN, --cls_arch cnn), on purpose: as a
    judge, SmallCNN (batch norm, global average pooling) calls uniform noise a digit with
    confidence, where this network stays unsure (MNIST pool at 16x16, 2 epochs, seed 0:
    images of noise with top probability < 0.5: SmallCNN 0%, DigitNet 57%; real test digits
    9% and 0.9%; accuracy 0.940 and 0.965), and scripts/set_diversity.py's 'unsure' column
    relies on it."""

    def __init__(self, img_size=IMG_SIZE):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc1 = nn.Linear(128 * (img_size // 4) ** 2, 128)
        self.fc2 = nn.Linear(128, NUM_CLASS)

    def features(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)   # S/2 x S/2
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)   # S/4 x S/4
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x):
        return self.fc2(self.features(x))


def arch_key(epochs=20):
    """What identifies a trained judge besides its seed: ARCH, the epochs and a hash of the code
    of its network and training (DigitNet, fit), so that a cache trained before either changed
    is retrained, never loaded into the new network."""
    code = inspect.getsource(DigitNet) + inspect.getsource(fit)
    return f'{ARCH}-e{epochs}-{hashlib.sha256(code.encode()).hexdigest()[:12]}'


def real_digits():
    """All 1797 digits: (float32 N x 3 x 8 x 8 in [-1, 1], int64 N)."""
    ds = build_reference_dataset('digitslt', '', IMG_SIZE)
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    return xs, torch.as_tensor(ds.targets, dtype=torch.int64)


def split(n, seed, test_frac=0.2):
    perm = np.random.RandomState(seed).permutation(n)
    n_test = int(round(n * test_frac))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def accuracy(model, x, y, batch=512):
    return float((predict(model, x, batch)[0] == y.numpy()).mean())


@torch.no_grad()
def predict(model, x, batch=512):
    """(predicted labels np.int64 N, penultimate features np.float32 N x 128)."""
    model.eval()
    preds, feats = [], []
    for i in range(0, len(x), batch):
        f = model.features(x[i:i + batch])
        preds.append(model.fc2(f).argmax(1))
        feats.append(f)
    return torch.cat(preds).numpy().astype(np.int64), torch.cat(feats).numpy().astype(np.float32)


def fit(x, y, seed, epochs=20, batch=64):
    """A DigitNet for x's image size trained (seeded, deterministic) on all of (x, y): Adam
    2e-3 with cosine decay, `epochs` epochs of batches of `batch`."""
    torch.manual_seed(seed)
    model = DigitNet(x.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            b = order[i:i + batch]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return model


def train_classifier(x, y, seed, epochs=20, batch=64, log=print):
    """Seeded training on the 80% split; returns (model, held-out accuracy)."""
    train_idx, test_idx = split(len(x), seed)
    model = fit(x[train_idx], y[train_idx], seed, epochs, batch)
    test_acc = accuracy(model, x[test_idx], y[test_idx])
    log(f'classifier: trained on {len(train_idx)} digits, held-out accuracy {test_acc:.4f} '
        f'({len(test_idx)} images)')
    return model, test_acc


def load_or_train(log_root, seed, x, y, log=print):
    """The classifier from LOG_ROOT/proxy_classifier.pt, or trained and cached there."""
    path = os.path.join(log_root, CACHE_NAME)
    if os.path.isfile(path):
        try:
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
            if ckpt.get('arch') == arch_key() and ckpt.get('seed') == seed:
                model = DigitNet()
                model.load_state_dict(ckpt['state'])
                log(f'classifier: cached {path}, held-out accuracy {ckpt["test_acc"]:.4f}')
                return model.eval(), float(ckpt['test_acc'])
            log(f'classifier: {path} is for another seed / architecture; retraining')
        except Exception as e:  # unreadable cache: retrain and overwrite
            log(f'classifier: cache {path} unreadable ({type(e).__name__}: {e}); retraining')
    model, test_acc = train_classifier(x, y, seed, log=log)
    os.makedirs(log_root, exist_ok=True)
    save_torch({'arch': arch_key(), 'seed': seed, 'state': model.state_dict(),
                'test_acc': test_acc}, path)
    return model.eval(), test_acc


def parse_samples(spec):
    """'NAME=SAMPLES.npy[,LABELS.npy]' -> (name, samples path, labels path)."""
    if '=' not in spec:
        raise UserError(f'--samples {spec}: expected NAME=SAMPLES.npy[,LABELS.npy]')
    name, paths = spec.split('=', 1)
    if ',' in paths:
        samples, labels = paths.split(',', 1)
    else:
        samples = paths
        stem = samples[:-4] if samples.endswith('.npy') else samples
        labels = stem + '_labels.npy'
        if not os.path.isfile(labels) and '_samples_' in os.path.basename(samples):
            labels = os.path.join(os.path.dirname(samples),
                                  os.path.basename(samples).replace('_samples_', '_labels_'))
    return name, samples, labels


def load_samples(samples, labels):
    """(float32 tensor N x 3 x 8 x 8 in [-1, 1], int64 tensor N) of a saved sample set."""
    for p in (samples, labels):
        if not os.path.isfile(p):
            raise UserError(f'sample file {p} not found')
    x = np.load(samples).astype(np.float32)
    y = np.load(labels).astype(np.int64)
    if x.ndim != 4 or x.shape[1:] != (3, IMG_SIZE, IMG_SIZE):
        raise UserError(f'{samples}: expected N x 3 x {IMG_SIZE} x {IMG_SIZE}, got {x.shape}')
    if y.shape != (len(x),):
        raise UserError(f'{labels}: {y.shape[0] if y.ndim else 0} labels for {len(x)} samples')
    if len(y) and (y.min() < 0 or y.max() >= NUM_CLASS):
        raise UserError(f'{labels}: labels must be class ids 0..{NUM_CLASS - 1} '
                        f'(unconditional samples cannot be scored per class)')
    x = torch.from_numpy(np.clip(x, 0.0, 1.0)) * 2 - 1
    return x, torch.from_numpy(y)


def pr(ref, ev):
    """Improved precision / recall, or NaN when a set has k or fewer points."""
    if len(ref) <= K or len(ev) <= K:
        return math.nan, math.nan
    return improved_precision_recall(ref, ev, k=K)


def score(gen_pred, gen_feats, gen_y, real_feats, real_y, groups):
    """{row: {'n', 'acc', 'precision', 'recall'}} for the classes and the groups."""
    out = {}
    for row, classes in [(str(c), [c]) for c in range(NUM_CLASS)] + list(groups.items()):
        g = np.isin(gen_y, classes)
        r = np.isin(real_y, classes)
        n = int(g.sum())
        acc = float((gen_pred[g] == gen_y[g]).mean()) if n else math.nan
        p, rec = pr(real_feats[r], gen_feats[g])
        out[row] = {'n': n, 'acc': acc, 'precision': p, 'recall': rec}
    return out


def fmt(v):
    return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.3f}'


def table(results, counts, groups, test_acc, n_real):
    names = list(results)
    head = ['class', 'train imgs'] + [f'{n} {m}' for n in names for m in ('acc', 'P', 'R')]
    lines = [f'Classifier: small CNN on the balanced digits, held-out accuracy {test_acc:.3f}; '
             f'precision (P) / recall (R): improved P/R, k={K}, in its feature space against '
             f'the {n_real} real digits (per row: generated vs real images of those classes).',
             '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    rows = [(str(c), str(int(counts[c]))) for c in range(NUM_CLASS)]
    rows += [(g, f'{int(sum(counts[c] for c in cl))} ({cl[0]}-{cl[-1]})' if g != 'all'
              else str(int(sum(counts)))) for g, cl in groups.items()]
    for row, count in rows:
        cells = [f'**{row}**' if row in groups else row, count]
        for n in names:
            r = results[n][row]
            cells += [fmt(r['acc']), fmt(r['precision']), fmt(r['recall'])]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--log_root', required=True, help='folder of the classifier cache')
    ap.add_argument('--samples', action='append', required=True,
                    help='NAME=SAMPLES.npy[,LABELS.npy] (repeat for each model)')
    ap.add_argument('--out', default='', help='markdown table (default LOG_ROOT/proxy_results.md)')
    ap.add_argument('--json', default='', help='also write the figures as JSON here')
    ap.add_argument('--seed', type=int, default=0, help='classifier seed and held-out split')
    ap.add_argument('--imb_factor', type=float, default=0.1, help='digits-LT imbalance (counts)')
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get('OMP_NUM_THREADS', '1') or 1)))
    sets = [parse_samples(s) for s in args.samples]
    names = [s[0] for s in sets]
    if len(set(names)) != len(names):
        raise UserError(f'--samples: duplicate names {names}')
    loaded = {name: load_samples(s, lab) for name, s, lab in sets}   # fail before training

    counts = build_dataset('digitslt', '', IMG_SIZE, args.imb_factor).class_counts
    order = [int(c) for c in np.argsort(-counts, kind='stable')]
    groups = {'head': sorted(order[:NUM_CLASS // 2]), 'tail': sorted(order[NUM_CLASS // 2:]),
              'all': list(range(NUM_CLASS))}
    x, y = real_digits()
    model, test_acc = load_or_train(args.log_root, args.seed, x, y)
    _, real_feats = predict(model, x)
    real_y = y.numpy()
    results = {}
    for name, (gx, gy) in loaded.items():
        pred, feats = predict(model, gx)
        results[name] = score(pred, feats, gy.numpy(), real_feats, real_y, groups)
    text = table(results, counts, groups, test_acc, len(x))
    print(text, end='')
    out = args.out or os.path.join(args.log_root, 'proxy_results.md')
    save_text(out, text)
    if args.json:
        payload = {'classifier_test_acc': test_acc, 'k': K, 'train_counts': counts.tolist(),
                   'groups': groups, 'samples': {n: {'samples': s, 'labels': lab}
                                                 for n, s, lab in sets},
                   'results': results}
        save_text(args.json, json.dumps(payload, indent=1, allow_nan=True) + '\n')
    print(f'wrote {out}' + (f' and {args.json}' if args.json else ''))
    return results


if __name__ == '__main__':
    run_script(main)
