"""Sample-quality metrics on Inception features: FID, IS, PRD and improved precision/recall.

All functions take plain arrays (numpy or torch) and make no assumption on the feature width
(2048 for Inception pool3, anything in the tests):

- `feature_stats`, `frechet_distance` (= pytorch-fid's `calculate_frechet_distance`),
  `frechet_distance_torch` (eigenvalue form on a device, float64) and `frechet_distance_feats`
  (exact low-rank form for small sets, used for per-class FID), `frechet_distance_to_stats`
  (a feature set against cached statistics, exact low-rank form below D samples).
- `inception_score`: Salimans et al. 2016, exp(E_x KL(p(y|x) || p(y))) over splits.
- `prd_scores`, `prd_f_beta`, `prd`: precision and recall for distributions, Sajjadi et al. 2018,
  following google/compare_gan `prd_score.py`.
- `knn_radii`, `improved_precision_recall`: Kynkaanniemi et al. 2019, computed with chunked
  pairwise distances in bounded memory (never an N x N matrix).
"""
import math
import warnings

import numpy as np
import torch
from scipy import special

try:  # tqdm is a dependency of pytorch-fid; keep the metrics usable without it
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    def tqdm(it=None, **kwargs):
        return it


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------
def _as_numpy(x, dtype=None):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x if dtype is None else x.astype(dtype, copy=False)


def feature_stats(feats, block=4096):
    """Mean and covariance of features.

    feats: N x D array (N >= 2, any float dtype). Returns (mu [D] float64, sigma [D, D] float64),
    equal to pytorch-fid's `np.mean` and `np.cov(rowvar=False)` (unbiased, divides by N - 1) up to
    rounding, accumulated in float64 blocks of `block` rows so that 50,000 x 2048 features need
    no float64 copy of the whole set.
    """
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f'feature_stats needs an N x D array with N >= 2, got {feats.shape}')
    n, d = feats.shape
    mu = np.zeros(d)
    for i in range(0, n, block):
        mu += _as_numpy(feats[i:i + block], np.float64).sum(axis=0)
    mu /= n
    sigma = np.zeros((d, d))
    for i in range(0, n, block):
        centred = _as_numpy(feats[i:i + block], np.float64) - mu
        sigma += centred.T @ centred
    return mu, sigma / (n - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """FID between N(mu1, sigma1) and N(mu2, sigma2) with scipy's sqrtm (pytorch-fid's function).

    ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)); returns a python float.
    """
    from pytorch_fid.fid_score import calculate_frechet_distance
    with warnings.catch_warnings():  # scipy >= 1.16 deprecates sqrtm(disp=) used by pytorch-fid
        warnings.simplefilter('ignore', DeprecationWarning)
        return float(calculate_frechet_distance(
            _as_numpy(mu1, np.float64), _as_numpy(sigma1, np.float64),
            _as_numpy(mu2, np.float64), _as_numpy(sigma2, np.float64), eps=eps))


def _sqrtm_psd(s):
    """Symmetric PSD square root via eigh (eigenvalues clamped at 0)."""
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance_torch(mu1, sigma1, mu2, sigma2, device='cpu'):
    """FID computed with torch in float64 on `device` (for `--fid_use_torch`).

    Tr sqrtm(sigma1 sigma2) = sum_i sqrt(lambda_i) with lambda the eigenvalues of the symmetric PSD
    matrix sqrt(sigma1) sigma2 sqrt(sigma1) (same spectrum as sigma1 sigma2). Agrees with
    `frechet_distance` to ~1e-6 relative on well-conditioned statistics. Returns a python float.
    """
    dev = torch.device(device)
    t = lambda a: torch.as_tensor(_as_numpy(a, np.float64), device=dev)  # noqa: E731
    mu1, sigma1, mu2, sigma2 = t(mu1), t(sigma1), t(mu2), t(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError('frechet_distance_torch: statistics of different dimensions')
    sigma1 = (sigma1 + sigma1.T) / 2
    sigma2 = (sigma2 + sigma2.T) / 2
    r1 = _sqrtm_psd(sigma1)
    m = r1 @ sigma2 @ r1
    lam = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0)
    diff = mu1 - mu2
    fid = diff.dot(diff) + torch.trace(sigma1) + torch.trace(sigma2) - 2 * lam.sqrt().sum()
    return float(fid.item())


def frechet_distance_feats(feats1, feats2, use_torch=False, device='cpu'):
    """FID between two feature sets (N1 x D, N2 x D, both N >= 2); returns a python float.

    When a set has fewer samples than dimensions (per-class FID: its covariance is singular),
    Tr sqrtm(sigma1 sigma2) is computed exactly as the nuclear norm of X2c X1c^T / sqrt((N1-1)(N2-1))
    (Xc = centred features), which is fast and stable; otherwise the statistics go through
    `frechet_distance` (scipy) or `frechet_distance_torch` (`use_torch`).
    """
    f1 = _as_numpy(feats1, np.float64)
    f2 = _as_numpy(feats2, np.float64)
    n1, d = f1.shape
    n2 = f2.shape[0]
    if n1 < 2 or n2 < 2 or f2.shape[1] != d:
        raise ValueError(f'frechet_distance_feats needs two N x D sets with N >= 2, '
                         f'got {f1.shape} and {f2.shape}')
    if min(n1, n2) < d:
        mu1, mu2 = f1.mean(0), f2.mean(0)
        a = f1 - mu1
        b = f2 - mu2
        tr1 = (a * a).sum() / (n1 - 1)
        tr2 = (b * b).sum() / (n2 - 1)
        h = a @ b.T                                   # n1 x n2
        tr_covmean = np.linalg.svd(h, compute_uv=False).sum() / math.sqrt((n1 - 1) * (n2 - 1))
        diff = mu1 - mu2
        return float(diff.dot(diff) + tr1 + tr2 - 2 * tr_covmean)
    mu1, s1 = feature_stats(f1)
    mu2, s2 = feature_stats(f2)
    if use_torch:
        return frechet_distance_torch(mu1, s1, mu2, s2, device=device)
    return frechet_distance(mu1, s1, mu2, s2)


def frechet_distance_to_stats(feats, mu, sigma, use_torch=False, device='cpu'):
    """FID between a feature set (N x D, N >= 2) and reference statistics (mu [D], sigma [D, D]).

    With N < D the set's covariance S = Xc^T Xc / (N - 1) is singular and scipy's sqrtm(S sigma)
    is ill-conditioned; Tr sqrtm(S sigma) = Tr sqrtm(sigma^1/2 S sigma^1/2) is then computed
    exactly as the nuclear norm of Xc sigma^1/2 / sqrt(N - 1) (an N x D matrix; its zero singular
    values stay zero, unlike square roots of rounded eigenvalues). Otherwise the set's statistics
    go through `frechet_distance` (scipy) or `frechet_distance_torch`. Returns a python float.
    """
    f = _as_numpy(feats, np.float64)
    mu = _as_numpy(mu, np.float64)
    sigma = _as_numpy(sigma, np.float64)
    n, d = f.shape
    if n < 2 or mu.shape != (d,) or sigma.shape != (d, d):
        raise ValueError(f'frechet_distance_to_stats needs N x D features with N >= 2 and D-dim '
                         f'statistics, got {f.shape}, {mu.shape}, {sigma.shape}')
    if n >= d:
        mu_f, sigma_f = feature_stats(f)
        if use_torch:
            return frechet_distance_torch(mu_f, sigma_f, mu, sigma, device=device)
        return frechet_distance(mu_f, sigma_f, mu, sigma)
    mu_f = f.mean(0)
    xc = f - mu_f
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    sigma_root = (v * np.sqrt(w.clip(min=0))) @ v.T
    tr_covmean = np.linalg.svd(xc @ sigma_root, compute_uv=False).sum() / math.sqrt(n - 1)
    diff = mu_f - mu
    tr_f = (xc * xc).sum() / (n - 1)
    return float(diff.dot(diff) + tr_f + np.trace(sigma) - 2 * tr_covmean)


def subsample_to_equal(a, b, seed=0):
    """(a', b', note): the larger of two N x D sets replaced by a seeded random subset of the
    smaller one's size (rows kept in order), as PRD does; note says what was drawn, else None."""
    n = min(len(a), len(b))
    if len(a) == len(b):
        return a, b, None
    rng = np.random.RandomState(seed)
    if len(a) > n:
        return a[np.sort(rng.choice(len(a), n, replace=False))], b, \
            f'random subset of {n} of the {len(a)} reference features (equal set sizes)'
    return a, b[np.sort(rng.choice(len(b), n, replace=False))], \
        f'random subset of {n} of the {len(b)} generated features (equal set sizes)'


# --------------------------------------------------------------------------------------------
# Inception score
# --------------------------------------------------------------------------------------------
def inception_score(probs, splits=10):
    """Inception score (mean, std) over `splits` consecutive splits, the standard formula.

    probs: N x C class probabilities (rows sum to 1; 1008-way softmax for Inception), N >= splits.
    Per split: exp(mean_x KL(p(y|x) || p(y))), p(y) the split's mean prediction; 0 log 0 = 0.
    Uniform predictions give 1; confident one-hots spread evenly over K classes give K.
    """
    p = _as_numpy(probs, np.float64)
    n = p.shape[0]
    if p.ndim != 2 or n < splits or splits < 1:
        raise ValueError(f'inception_score needs an N x C array with N >= splits={splits}, '
                         f'got {p.shape}')
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)
        kl = special.rel_entr(part, py).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


# --------------------------------------------------------------------------------------------
# PRD (Sajjadi et al. 2018; google/compare_gan prd_score.py)
# --------------------------------------------------------------------------------------------
def compute_prd(eval_dist, ref_dist, num_angles=1001, epsilon=1e-10):
    """PRD curve of two histograms over the same bins (compare_gan `compute_prd`).

    Returns (precision [num_angles], recall [num_angles]) in [0, 1], for slopes tan(angle),
    angle linearly spaced in [epsilon, pi/2 - epsilon].
    """
    if not 0 < epsilon < 0.1:
        raise ValueError('epsilon must be in (0, 0.1)')
    if not 3 <= num_angles <= 1e6:
        raise ValueError('num_angles must be in [3, 1e6]')
    angles = np.linspace(epsilon, math.pi / 2 - epsilon, num=num_angles)
    slopes = np.tan(angles)
    precision = np.minimum(ref_dist[None, :] * slopes[:, None], eval_dist[None, :]).sum(axis=1)
    recall = precision / slopes
    max_val = max(np.max(precision), np.max(recall))
    if max_val > 1.001:
        raise ValueError(f'PRD value {max_val} > 1.001, this should not happen')
    return np.clip(precision, 0, 1), np.clip(recall, 0, 1)


def _cluster_into_bins(eval_data, ref_data, num_clusters, random_state):
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits
    data = np.vstack([eval_data, ref_data])
    km = MiniBatchKMeans(n_clusters=num_clusters, n_init=10, random_state=random_state)
    # sklearn parallelises with OpenMP; nested multi-threaded BLAS (k-means++ init) oversubscribes
    # the cores and was ~7x slower on a busy 2-core machine, so BLAS runs single-threaded here.
    with threadpool_limits(limits=1, user_api='blas'):
        labels = km.fit(data).labels_
    eval_labels = labels[:len(eval_data)]
    ref_labels = labels[len(eval_data):]
    eval_bins = np.histogram(eval_labels, bins=num_clusters, range=[0, num_clusters],
                             density=True)[0]
    ref_bins = np.histogram(ref_labels, bins=num_clusters, range=[0, num_clusters],
                            density=True)[0]
    return eval_bins, ref_bins


def prd_scores(ref_feats, eval_feats, num_clusters=20, num_angles=1001, num_runs=10, seed=0):
    """PRD curves of `eval_feats` w.r.t. `ref_feats` (equal sizes N x D), averaged over runs.

    Each run clusters the union with MiniBatchKMeans(num_clusters, n_init=10,
    random_state=seed + run), histograms both sides over the clusters and computes `compute_prd`.
    Features are clustered in float32 (compare_gan casts to float64; halves memory at 50k + 50k).
    Returns (precision [num_angles], recall [num_angles]).
    """
    ref = _as_numpy(ref_feats, np.float32)
    ev = _as_numpy(eval_feats, np.float32)
    if len(ref) != len(ev):
        raise ValueError(f'prd_scores needs equal sizes, got {len(ref)} ref and {len(ev)} eval '
                         f'(use prd() to subsample)')
    precisions, recalls = [], []
    for run in range(num_runs):
        eval_dist, ref_dist = _cluster_into_bins(ev, ref, num_clusters, seed + run)
        p, r = compute_prd(eval_dist, ref_dist, num_angles)
        precisions.append(p)
        recalls.append(r)
    return np.mean(precisions, axis=0), np.mean(recalls, axis=0)


def _f_beta(precision, recall, beta, epsilon=1e-10):
    return (1 + beta ** 2) * (precision * recall) / ((beta ** 2 * precision) + recall + epsilon)


def prd_f_beta(precision, recall, beta=8):
    """(max F_beta, max F_1/beta) of a PRD curve: F_8 summarises recall, F_1/8 precision."""
    precision = np.asarray(precision)
    recall = np.asarray(recall)
    if not ((precision >= 0).all() and (precision <= 1).all()
            and (recall >= 0).all() and (recall <= 1).all()):
        raise ValueError('precision and recall must be in [0, 1]')
    return (float(np.max(_f_beta(precision, recall, beta))),
            float(np.max(_f_beta(precision, recall, 1.0 / beta))))


def prd(ref_feats, eval_feats, num_clusters=20, num_angles=1001, num_runs=10, seed=0, beta=8):
    """PRD summary (F_beta, F_1/beta, note) for sets of any sizes.

    PRD needs equal sizes: a seeded random subset of the larger side is drawn (note says so,
    else note is None). `num_clusters` is capped at the per-side size (also noted). The reference
    setting is 20 clusters per class: pass num_clusters = 20 * num_class.
    """
    ref = _as_numpy(ref_feats, np.float32)
    ev = _as_numpy(eval_feats, np.float32)
    notes = []
    n = min(len(ref), len(ev))
    if n < 2:
        raise ValueError('prd needs at least 2 samples on each side')
    rng = np.random.RandomState(seed)
    if len(ref) > n:
        ref = ref[np.sort(rng.choice(len(ref), n, replace=False))]
        notes.append(f'PRD: random subset of {n} of the {len(ref_feats)} reference features '
                     f'(PRD needs equal sizes)')
    elif len(ev) > n:
        ev = ev[np.sort(rng.choice(len(ev), n, replace=False))]
        notes.append(f'PRD: random subset of {n} of the {len(eval_feats)} generated features '
                     f'(PRD needs equal sizes)')
    if num_clusters > n:
        notes.append(f'PRD: {num_clusters} clusters capped at {n} (samples per side)')
        num_clusters = n
    precision, recall = prd_scores(ref, ev, num_clusters=num_clusters, num_angles=num_angles,
                                   num_runs=num_runs, seed=seed)
    f_beta, f_beta_inv = prd_f_beta(precision, recall, beta=beta)
    return f_beta, f_beta_inv, ('; '.join(notes) if notes else None)


# --------------------------------------------------------------------------------------------
# Improved precision / recall (Kynkaanniemi et al. 2019), chunked
# --------------------------------------------------------------------------------------------
DEFAULT_CHUNK = 5000


def _to_tensor(x, device):
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=torch.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    return torch.from_numpy(x).to(device)


def _sq_dists(a, b, a2, b2):
    """Squared Euclidean distances of row sets a [r, D], b [c, D]: ||a||^2 + ||b||^2 - 2 a b^T >= 0."""
    d = torch.mm(a, b.T)
    d.mul_(-2).add_(a2[:, None]).add_(b2[None, :]).clamp_(min=0)
    return d


def _merge_smallest(best, cand, kk):
    """Keep the kk smallest values per row of cat(best, cand) (both [r, *])."""
    both = torch.cat([best, cand], dim=1)
    return torch.topk(both, min(kk, both.shape[1]), dim=1, largest=False, sorted=True).values


def knn_radii(feats, k=5, device='cpu', chunk=DEFAULT_CHUNK, progress=False):
    """Distance of each sample to its k-th nearest neighbour in the same set (self excluded).

    feats: N x D (N > k). Returns float32 numpy [N] Euclidean distances. Memory: O(chunk^2 + N k);
    the distance blocks are computed once per unordered chunk pair (symmetric) and the running
    k+1 smallest squared distances per row (self at 0 included, as in Kynkaanniemi et al.'s code)
    are merged across chunks.
    """
    dev = torch.device(device)
    x = _to_tensor(feats, dev)
    n = x.shape[0]
    if n <= k:
        raise ValueError(f'knn_radii needs more than k={k} samples, got {n}')
    kk = k + 1
    x2 = (x * x).sum(1)
    best = torch.full((n, kk), float('inf'), device=dev)
    starts = list(range(0, n, chunk))
    pairs = [(i, j) for ii, i in enumerate(starts) for j in starts[ii:]]
    with torch.no_grad():
        for i, j in tqdm(pairs, disable=not progress, desc='k-NN radii', leave=False):
            a, b = x[i:i + chunk], x[j:j + chunk]
            d = _sq_dists(a, b, x2[i:i + chunk], x2[j:j + chunk])
            if i == j:
                d.fill_diagonal_(0)
            m = min(kk, d.shape[1])
            cand = torch.topk(d, m, dim=1, largest=False, sorted=False).values
            best[i:i + chunk] = _merge_smallest(best[i:i + chunk], cand, kk)
            if i != j:
                m = min(kk, d.shape[0])
                cand = torch.topk(d, m, dim=0, largest=False, sorted=False).values.T
                best[j:j + chunk] = _merge_smallest(best[j:j + chunk], cand, kk)
            del d
    return best[:, k].sqrt().cpu().numpy().astype(np.float32)


def improved_precision_recall(ref_feats, eval_feats, k=5, device='cpu', chunk=DEFAULT_CHUNK,
                              ref_radii=None, eval_radii=None, progress=False):
    """Improved precision and recall (Kynkaanniemi et al. 2019) -> (precision, recall) floats.

    ref_feats: N_r x D, eval_feats: N_e x D (each N > k). The manifold of a set is the union of
    balls around its samples with radius = distance to the k-th nearest neighbour in the set.
    precision = fraction of eval samples inside the reference manifold; recall = fraction of
    reference samples inside the eval manifold (a point on a ball's boundary counts as inside).
    `ref_radii` / `eval_radii` (from `knn_radii` with the same k) skip recomputing them.
    Distances are float32, chunked: 50k x 50k x 2048 runs in ~1.5 GiB.
    """
    dev = torch.device(device)
    ref = _to_tensor(ref_feats, dev)
    ev = _to_tensor(eval_feats, dev)
    if ref.shape[1] != ev.shape[1]:
        raise ValueError(f'feature widths differ: {ref.shape[1]} vs {ev.shape[1]}')
    if ref_radii is None:
        ref_radii = knn_radii(ref, k, dev, chunk, progress)
    if eval_radii is None:
        eval_radii = knn_radii(ev, k, dev, chunk, progress)
    ref_r2 = torch.as_tensor(np.asarray(ref_radii, np.float32), device=dev) ** 2
    ev_r2 = torch.as_tensor(np.asarray(eval_radii, np.float32), device=dev) ** 2
    if ref_r2.shape[0] != ref.shape[0] or ev_r2.shape[0] != ev.shape[0]:
        raise ValueError('radii do not match the number of features')
    ref2 = (ref * ref).sum(1)
    ev2 = (ev * ev).sum(1)
    ev_in_ref = torch.zeros(ev.shape[0], dtype=torch.bool, device=dev)
    ref_in_ev = torch.zeros(ref.shape[0], dtype=torch.bool, device=dev)
    pairs = [(i, j) for i in range(0, ev.shape[0], chunk) for j in range(0, ref.shape[0], chunk)]
    with torch.no_grad():
        for i, j in tqdm(pairs, disable=not progress, desc='precision/recall', leave=False):
            d = _sq_dists(ev[i:i + chunk], ref[j:j + chunk], ev2[i:i + chunk], ref2[j:j + chunk])
            ev_in_ref[i:i + chunk] |= (d <= ref_r2[None, j:j + chunk]).any(dim=1)
            ref_in_ev[j:j + chunk] |= (d <= ev_r2[i:i + chunk, None]).any(dim=0)
            del d
    return float(ev_in_ref.float().mean().item()), float(ref_in_ev.float().mean().item())
