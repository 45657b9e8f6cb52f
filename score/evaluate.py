"""High-level evaluation of generated samples for main.py (no absl flags in here).

- Reference files: `make_stats` writes the FID cache `stats/X.npz` (np.savez keys mu, sigma, the
  format pytorch-fid / pytorch-ddpm read) and beside it `stats/X_feats.npz` with the Inception pool3
  features of the same images (feats float32 N x 2048, labels int64 N, radii float32 N = distance
  to the 5th nearest neighbour for improved precision/recall, k int64 scalar).
- `evaluate(feats, probs, labels, ...)` computes IS, FID against the cache, PRD (F_8 / F_1/8,
  20 clusters per class) and improved precision/recall (k=5) against the reference features,
  overall, per head/medium/tail group and per class (CIFAR-100-LT groups: more than 100,
  20..100, fewer than 20 training images).
- `write_per_class_csv`, `format_results` for the outputs.
Metrics that cannot be computed (no reference features, too few samples) are None, with a reason
in results['notes'].
"""
import csv
import io
import os
import time
import zipfile

import numpy as np

from utils import UserError, save_npz, save_text
from score import metrics

GROUPS = ('head', 'medium', 'tail')
PER_CLASS_COLUMNS = ('class', 'train_count', 'group', 'n_generated', 'n_real', 'fid', 'precision',
                     'recall')
MAKE_STATS_HINT = 'python main.py --make_stats --data_type ... --root ...'


# --------------------------------------------------------------------------------------------
# Reference files
# --------------------------------------------------------------------------------------------
def ref_feats_path(fid_cache):
    """'stats/cifar100.train.npz' -> 'stats/cifar100.train_feats.npz'."""
    fid_cache = os.fspath(fid_cache)
    base = fid_cache[:-4] if fid_cache.endswith('.npz') else fid_cache
    return base + '_feats.npz'


def _load_npz(path):
    with np.load(path, allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


def load_fid_cache(path):
    """(mu [D] float64, sigma [D, D] float64) from a FID cache npz; UserError if absent/malformed."""
    if not path or not os.path.isfile(path):
        raise UserError(f'--fid_cache {path}: file not found; create it with `{MAKE_STATS_HINT}` '
                        f'or point --fid_cache to an existing npz with mu and sigma')
    try:
        data = _load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f'--fid_cache {path}: not a readable npz file ({type(e).__name__}); '
                        f'recreate it with `{MAKE_STATS_HINT}`') from None
    mu, sigma = data.get('mu'), data.get('sigma')
    if mu is None or sigma is None:
        raise UserError(f'--fid_cache {path}: needs arrays mu and sigma, has {sorted(data)}; '
                        f'recreate it with `{MAKE_STATS_HINT}`')
    ok = (mu.ndim == 1 and sigma.ndim == 2 and sigma.shape == (mu.shape[0], mu.shape[0])
          and mu.shape[0] > 0 and np.issubdtype(mu.dtype, np.number)
          and np.issubdtype(sigma.dtype, np.number))
    if not ok or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f'--fid_cache {path}: mu {mu.shape} / sigma {sigma.shape} are not a '
                        f'D vector and a finite D x D matrix; recreate it with `{MAKE_STATS_HINT}`')
    return mu.astype(np.float64), sigma.astype(np.float64)


def load_ref_feats(path):
    """Reference features beside the FID cache, or None if `path` does not exist.

    Returns dict(feats float32 [N, D], labels int64 [N] (-1 = unknown), radii float32 [N] or None,
    k int). UserError if the file is malformed.
    """
    if not path or not os.path.isfile(path):
        return None
    hint = f'delete it or recreate it with `{MAKE_STATS_HINT}`'
    try:
        data = _load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f'reference features {path}: not a readable npz ({type(e).__name__}); '
                        f'{hint}') from None
    feats = data.get('feats')
    if feats is None or feats.ndim != 2 or feats.shape[0] < 1 \
            or not np.issubdtype(feats.dtype, np.floating):
        raise UserError(f'reference features {path}: needs a float N x D array feats; {hint}')
    n = feats.shape[0]
    labels = data.get('labels')
    if labels is None:
        labels = np.full(n, -1, np.int64)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f'reference features {path}: labels must be {n} integers; {hint}')
    radii = data.get('radii')
    if radii is not None and radii.shape != (n,):
        raise UserError(f'reference features {path}: radii must have {n} entries; {hint}')
    k = int(data['k']) if 'k' in data else 5
    return dict(feats=feats.astype(np.float32, copy=False), labels=labels.astype(np.int64),
                radii=None if radii is None else radii.astype(np.float32), k=k)


def make_stats(images, labels, fid_cache_path, net, batch_size=200, device=None, amp='none',
               k=5, chunk=metrics.DEFAULT_CHUNK, progress=True):
    """Write the FID cache and the reference features of `images` (the balanced training set).

    images: N x 3 x H x W (float in [0, 1] or uint8) or an iterable of batches (see
    `score.inception.compute_features`); labels: N class indices or None (stored as -1).
    device: defaults to the net's device (also used for the k-NN radii).
    Writes `fid_cache_path` (mu, sigma) and `ref_feats_path(fid_cache_path)` (feats, labels,
    radii with k nearest neighbours, k), both atomically. Returns the dict of what was written.
    """
    from score.inception import compute_features
    if device is None:
        device = next(net.parameters()).device
    feats, _ = compute_features(images, net, batch_size=batch_size, device=device, amp=amp,
                                progress=progress)
    n = feats.shape[0]
    if labels is None:
        labels = np.full(n, -1, np.int64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(f'make_stats: {labels.shape[0]} labels for {n} images')
    mu, sigma = metrics.feature_stats(feats)
    radii = metrics.knn_radii(feats, k=k, device=device, chunk=chunk, progress=progress)
    folder = os.path.dirname(os.path.abspath(fid_cache_path))
    os.makedirs(folder, exist_ok=True)
    feats_path = ref_feats_path(fid_cache_path)
    save_npz(feats_path, feats=feats, labels=labels, radii=radii, k=np.int64(k))
    save_npz(fid_cache_path, mu=mu, sigma=sigma)
    return dict(mu=mu, sigma=sigma, feats=feats, labels=labels, radii=radii, k=k,
                fid_cache=fid_cache_path, feats_path=feats_path)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def class_groups(class_counts, many=100, few=20):
    """Head/medium/tail class indices from training counts per class.

    Returns {'head': count > many, 'medium': few <= count <= many, 'tail': count < few} as int64
    arrays of class indices (CIFAR-100-LT: many 100, few 20).
    """
    c = np.asarray(class_counts)
    return {'head': np.flatnonzero(c > many).astype(np.int64),
            'medium': np.flatnonzero((c >= few) & (c <= many)).astype(np.int64),
            'tail': np.flatnonzero(c < few).astype(np.int64)}


def _is(probs, notes, what):
    n = len(probs)
    if n < 1:
        return None, None
    splits = min(10, n)
    if splits < 10:
        notes.append(f'IS {what}: {splits} splits ({n} images)')
    return metrics.inception_score(probs, splits=splits)


def _fid_feats(gen, ref, use_torch, device, min_images):
    """FID of two labelled subsets, or None when either side has fewer than `min_images`:
    FID's bias grows as 1/N, so small per-class sets are only comparable at equal sizes."""
    if min(len(gen), len(ref)) < max(2, min_images):
        return None
    return metrics.frechet_distance_feats(gen, ref, use_torch=use_torch, device=device)


def _pr(ref, gen, k, device, ref_radii=None, seed=0, notes=None):
    """Improved precision / recall with the larger set subsampled (seeded) to the smaller's
    size, so that both manifolds are estimated from as many points (as PRD does)."""
    if len(gen) < 2 * k or len(ref) < 2 * k:
        return None, None
    ref_s, gen_s, note = metrics.subsample_to_equal(ref, gen, seed)
    if note and notes is not None:
        notes.append(f'precision/recall: {note}')
    if len(ref_s) != len(ref):
        ref_radii = None  # the k-NN radii of the full reference set do not apply to a subset
    return metrics.improved_precision_recall(ref_s, gen_s, k=k, device=device, ref_radii=ref_radii)


def evaluate(feats, probs, labels, fid_cache, ref=None, class_counts=None, num_class=None,
             prd=True, improved_prd=True, use_torch=False, device='cpu', many=100, few=20,
             seed=0, k=5, prd_runs=10, min_fid_images=100, log=None):
    """All metrics of a generated sample set -> (results dict, per-class rows list).

    feats: [N, D] float pool3 features; probs: [N, 1008] softmax (or None: no IS); labels: [N]
    class indices of the generated images or None. fid_cache: path of the FID cache or (mu, sigma).
    ref: `load_ref_feats` dict (or None: no PRD / precision / recall / group FID). class_counts:
    training images per class (long-tailed set) for the head/medium/tail groups.
    Result keys: num_images, IS, IS_std, FID, F8, F1/8, precision, recall, and per group
    g in head/medium/tail: classes_g, n_g, IS_g, FID_g, F8_g, F1/8_g, precision_g, recall_g;
    plus notes (list of str). Values are python floats/ints or None. Each per-class row is a dict
    with the keys of PER_CLASS_COLUMNS. Group and per-class FID are None unless both sides have at
    least `min_fid_images` images; improved precision / recall compare equal-size sets (the larger
    side subsampled with `seed`).
    """
    say = log or (lambda msg: None)
    t0 = time.time()
    feats = np.asarray(feats, np.float32)
    n, dim = feats.shape
    notes = []
    res = {'num_images': int(n)}
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f'evaluate: {labels.shape[0]} labels for {n} feature rows')
    if num_class is None:
        if class_counts is not None:
            num_class = len(class_counts)
        elif ref is not None and (ref['labels'] >= 0).any():
            num_class = int(ref['labels'].max()) + 1
        elif labels is not None and (labels >= 0).any():
            num_class = int(labels.max()) + 1

    # IS
    if probs is not None:
        res['IS'], res['IS_std'] = _is(np.asarray(probs), notes, 'overall')
    else:
        res['IS'] = res['IS_std'] = None
    # FID against the cache
    if isinstance(fid_cache, (tuple, list)):
        mu, sigma = (np.asarray(a, np.float64) for a in fid_cache)
    else:
        mu, sigma = load_fid_cache(fid_cache)
    if mu.shape[0] != dim:
        raise UserError(f'--fid_cache holds {mu.shape[0]}-d statistics but the features are '
                        f'{dim}-d; recreate it with `{MAKE_STATS_HINT}`')
    res['FID'] = None
    if n >= 2:
        res['FID'] = metrics.frechet_distance_to_stats(feats, mu, sigma, use_torch=use_torch,
                                                       device=device)
        if n < dim:
            notes.append(f'FID: {n} images < {dim} feature dimensions; exact low-rank form, '
                         f'biased upwards at small N')
    else:
        notes.append('FID: needs at least 2 images')
    say(f'IS/FID done ({time.time() - t0:.0f}s)')

    # Reference-feature metrics
    res.update({'F8': None, 'F1/8': None, 'precision': None, 'recall': None})
    if ref is None:
        notes.append('no reference features (the _feats.npz beside --fid_cache): PRD, '
                     'precision/recall and group/per-class FID skipped; create them with '
                     f'`{MAKE_STATS_HINT}`')
    elif ref['feats'].shape[1] != dim:
        raise UserError(f'reference features are {ref["feats"].shape[1]}-d but the generated '
                        f'features are {dim}-d; recreate them with `{MAKE_STATS_HINT}`')
    clusters_per_class = 20
    n_clusters = clusters_per_class * (num_class or 1)
    if ref is not None and num_class is None:
        notes.append('PRD: number of classes unknown, 20 clusters used')
    if ref is not None and prd and n >= 2:
        f8, f18, note = metrics.prd(ref['feats'], feats, num_clusters=n_clusters,
                                    num_runs=prd_runs, seed=seed)
        res['F8'], res['F1/8'] = f8, f18
        if note:
            notes.append(note)
        say(f'PRD done ({time.time() - t0:.0f}s)')
    if ref is not None and improved_prd:
        radii = ref.get('radii') if ref.get('k', 5) == k else None
        res['precision'], res['recall'] = _pr(ref['feats'], feats, k, device, ref_radii=radii,
                                              seed=seed, notes=notes)
        if res['precision'] is None:
            notes.append(f'precision/recall: needs at least {2 * k} images on each side')
        say(f'precision/recall done ({time.time() - t0:.0f}s)')

    # Groups and classes
    ref_labels = None
    if ref is not None and (ref['labels'] >= 0).any():
        ref_labels = ref['labels']
    elif ref is not None:
        notes.append('reference features have no labels: group/per-class metrics skipped')
    groups = class_groups(class_counts, many, few) if class_counts is not None else None
    if groups is not None and labels is not None:
        for g in GROUPS:
            cls = groups[g]
            gmask = np.isin(labels, cls)
            res[f'classes_{g}'] = int(len(cls))
            res[f'n_{g}'] = int(gmask.sum())
            for key in ('IS', 'FID', 'F8', 'F1/8', 'precision', 'recall'):
                res[f'{key}_{g}'] = None
            if probs is not None and gmask.any():
                res[f'IS_{g}'] = _is(np.asarray(probs)[gmask], notes, g)[0]
            if ref_labels is None or not gmask.any():
                continue
            gen_g = feats[gmask]
            ref_g = ref['feats'][np.isin(ref_labels, cls)]
            res[f'FID_{g}'] = _fid_feats(gen_g, ref_g, use_torch, device, min_fid_images)
            if prd and min(len(gen_g), len(ref_g)) >= 2:
                f8, f18, note = metrics.prd(ref_g, gen_g, num_clusters=clusters_per_class * len(cls),
                                            num_runs=prd_runs, seed=seed)
                res[f'F8_{g}'], res[f'F1/8_{g}'] = f8, f18
                if note:
                    notes.append(f'{g}: {note}')
            if improved_prd:
                res[f'precision_{g}'], res[f'recall_{g}'] = _pr(ref_g, gen_g, k, device,
                                                                seed=seed)
            say(f'group {g} done ({time.time() - t0:.0f}s)')
    elif class_counts is None and labels is not None:
        notes.append('no training class counts: head/medium/tail groups skipped')

    rows = []
    if labels is not None and num_class:
        group_of = {}
        if groups is not None:
            for g in GROUPS:
                for c in groups[g]:
                    group_of[int(c)] = g
        for c in range(num_class):
            gen_c = feats[labels == c]
            row = {'class': c,
                   'train_count': None if class_counts is None else int(class_counts[c]),
                   'group': group_of.get(c), 'n_generated': int(len(gen_c)), 'n_real': None,
                   'fid': None, 'precision': None, 'recall': None}
            if ref_labels is not None:
                ref_c = ref['feats'][ref_labels == c]
                row['n_real'] = int(len(ref_c))
                row['fid'] = _fid_feats(gen_c, ref_c, use_torch, device, min_fid_images)
                if improved_prd:
                    row['precision'], row['recall'] = _pr(ref_c, gen_c, k, device, seed=seed)
            rows.append(row)
        if ref_labels is not None and any(r['fid'] is None for r in rows):
            notes.append(f'per-class / group FID left blank where either side has fewer than '
                         f'{min_fid_images} images (--min_fid_images)')
        say(f'per-class done ({time.time() - t0:.0f}s)')
    res['notes'] = notes
    return res, rows


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
def _fmt(v, spec='.4f'):
    if v is None:
        return ''
    if isinstance(v, (float, np.floating)):
        return format(float(v), spec)
    return str(v)


def write_per_class_csv(path, rows):
    """Write per-class rows atomically with columns class,train_count,group,n_generated,fid,
    precision,recall (None -> empty cell)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(PER_CLASS_COLUMNS)
    for r in rows:
        w.writerow([_fmt(r.get(c), '.6f') for c in PER_CLASS_COLUMNS])
    save_text(path, buf.getvalue())


def format_results(results):
    """Human-readable multi-line summary of `evaluate` results ('-' = not computed)."""
    def f(key, spec='.4f'):
        v = results.get(key)
        return '-' if v is None else _fmt(v, spec)

    lines = [f"images      {results.get('num_images', '-')}",
             f"IS          {f('IS')} +- {f('IS_std')}",
             f"FID         {f('FID')}",
             f"PRD         F8 (recall) {f('F8')}   F1/8 (precision) {f('F1/8')}",
             f"improved    precision {f('precision')}   recall {f('recall')}"]
    if any(f'n_{g}' in results for g in GROUPS):
        lines.append(f"{'group':<8}{'classes':>8}{'n_gen':>8}{'IS':>9}{'FID':>10}{'F8':>8}"
                     f"{'F1/8':>8}{'prec':>8}{'recall':>8}")
        for g in GROUPS:
            lines.append(f"{g:<8}{results.get(f'classes_{g}', '-'):>8}{results.get(f'n_{g}', '-'):>8}"
                         f"{f(f'IS_{g}', '.3f'):>9}{f(f'FID_{g}', '.3f'):>10}"
                         f"{f(f'F8_{g}', '.3f'):>8}{f(f'F1/8_{g}', '.3f'):>8}"
                         f"{f(f'precision_{g}', '.3f'):>8}{f(f'recall_{g}', '.3f'):>8}")
    for note in results.get('notes') or []:
        lines.append(f'note: {note}')
    return '\n'.join(lines) + '\n'
