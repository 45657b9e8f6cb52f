"""Tests of the score package: FID Inception loading (random weights in a temporary torch hub
folder, never downloaded), the metrics against brute-force / pytorch-fid references, and the
high-level evaluation. CPU only, small sizes."""
import csv
import os

import numpy as np
import pytest
import torch

from utils import UserError
from score import evaluate as ev
from score import inception as inc
from score import metrics as M

WEIGHTS_NAME = 'pt_inception-2015-12-05-6726825d.pth'


# --------------------------------------------------------------------------------------------
# Inception
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def random_weights(tmp_path_factory):
    """A state dict of the FID Inception architecture with random weights, saved once."""
    from fakedata import random_inception
    path = tmp_path_factory.mktemp('weights') / WEIGHTS_NAME
    torch.save(random_inception().state_dict(), path)
    return path


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub folder for this test (restored afterwards)."""
    monkeypatch.setattr(torch.hub, '_hub_dir', torch.hub._hub_dir)
    torch.hub.set_dir(str(tmp_path / 'hub'))
    return tmp_path / 'hub'


@pytest.fixture
def hub_with_weights(hub_dir, random_weights):
    ckpt = hub_dir / 'checkpoints'
    ckpt.mkdir(parents=True)
    os.symlink(random_weights, ckpt / WEIGHTS_NAME)
    return hub_dir


@pytest.fixture(scope='module')
def images():
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, size=(2, 3, 32, 32)).astype(np.uint8)


def test_weights_file_missing(hub_dir):
    with pytest.raises(UserError) as e:
        inc.weights_file()
    msg = str(e.value)
    assert WEIGHTS_NAME in msg and str(hub_dir / 'checkpoints') in msg
    assert '--inception_weights' in msg and 'https://' in msg and '\n' not in msg
    with pytest.raises(UserError, match='--inception_weights'):
        inc.load_inception(str(hub_dir / 'nope.pth'))


def test_corrupt_weights(tmp_path):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(UserError, match='bad.pth'):
        inc.load_inception(str(bad))
    wrong = tmp_path / 'wrong.pth'
    torch.save({'fc.weight': torch.zeros(3, 3)}, wrong)
    with pytest.raises(UserError, match='wrong.pth'):
        inc.load_inception(str(wrong))


def test_inception_features(hub_with_weights, images, monkeypatch):
    net = inc.load_inception()  # the default path: <hub>/checkpoints/<pytorch-fid file name>
    assert not net.training
    feats, probs = inc.compute_features(images, net, batch_size=1, progress=False)
    assert feats.shape == (2, 2048) and probs.shape == (2, 1008)
    assert feats.dtype == np.float32 and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and (probs >= 0).all()
    # float input in [0, 1] and an iterable of (images, labels) batches give the same
    f2, p2 = inc.compute_features([(torch.from_numpy(images[:1]).float() / 255, None),
                                   images[1:].astype(np.float32) / 255], net, progress=False)
    assert np.allclose(f2, feats, atol=1e-4) and np.allclose(p2, probs, atol=1e-5)
    # pool3 equals pytorch-fid's InceptionV3 wrapper with the same weights
    import pytorch_fid.inception as pfi
    state = torch.load(inc.weights_file(), weights_only=True)
    monkeypatch.setattr(pfi, 'load_state_dict_from_url', lambda *a, **k: state)
    ref = pfi.InceptionV3([3]).eval()
    with torch.no_grad():
        pool = ref(torch.from_numpy(images).float() / 255)[0].flatten(1).numpy()
    assert np.allclose(pool, feats, rtol=1e-4, atol=1e-5)
    # IS probabilities: softmax(pool3 @ W^T) without the fc bias (improved-gan's logits)
    w = state['fc.weight'].double().numpy()
    logits = feats.astype(np.float64) @ w.T
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    assert np.allclose(probs, want, rtol=1e-4, atol=1e-7)
    with_bias = logits + state['fc.bias'].double().numpy()
    with_bias = np.exp(with_bias - with_bias.max(1, keepdims=True))
    with_bias /= with_bias.sum(1, keepdims=True)
    assert not np.allclose(probs, with_bias, rtol=1e-4, atol=1e-7)
    with pytest.raises(UserError, match='fp16'):
        inc.compute_features(images, net, amp='fp16', device='cpu', progress=False)


def test_make_stats(hub_with_weights, tmp_path):
    net = inc.load_inception()
    rng = np.random.RandomState(1)
    imgs = rng.rand(4, 3, 16, 16).astype(np.float32)
    labels = np.array([0, 1, 0, 1])
    cache = str(tmp_path / 'stats' / 'toy.train.npz')
    out = ev.make_stats(imgs, labels, cache, net, batch_size=3, device='cpu', k=2, progress=False)
    mu, sigma = ev.load_fid_cache(cache)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    with np.load(cache) as f:
        assert set(f.files) == {'mu', 'sigma'}
    ref = ev.load_ref_feats(ev.ref_feats_path(cache))
    assert ref['feats'].shape == (4, 2048) and ref['feats'].dtype == np.float32
    assert ref['labels'].dtype == np.int64 and (ref['labels'] == labels).all()
    assert ref['radii'].shape == (4,) and ref['k'] == 2
    brute = torch.cdist(torch.from_numpy(out['feats']).double(),
                        torch.from_numpy(out['feats']).double()).sort(1).values[:, 2].numpy()
    # float32 distances by |a|^2 + |b|^2 - 2ab: absolute error relative to the feature norms
    assert np.allclose(ref['radii'], brute, rtol=1e-4, atol=1e-4 * np.abs(out['feats']).max())
    feats, _ = inc.compute_features(imgs, net, batch_size=4, progress=False)
    assert np.allclose(ref['feats'], feats, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fid_matches_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance
    rng = np.random.RandomState(0)
    a = rng.randn(300, 16) @ rng.randn(16, 16)
    b = rng.randn(250, 16) @ rng.randn(16, 16) + 0.5
    mu1, s1 = M.feature_stats(a)
    mu2, s2 = M.feature_stats(b)
    assert mu1.dtype == np.float64 and np.allclose(s1, np.cov(a, rowvar=False))
    want = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
    assert M.frechet_distance_torch(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
    assert M.frechet_distance_feats(a, b) == pytest.approx(want, rel=1e-9)
    assert M.frechet_distance_feats(a, b, use_torch=True) == pytest.approx(want, rel=1e-9)
    assert M.frechet_distance_to_stats(a, mu2, s2) == pytest.approx(want, rel=1e-9)
    assert abs(M.frechet_distance(mu1, s1, mu1, s1)) < 1e-6
    assert abs(M.frechet_distance_torch(mu1, s1, mu1, s1)) < 1e-6
    # fewer samples than dimensions (singular covariances): exact low-rank form
    c, d = a[:10], b[:12]
    lr = M.frechet_distance_feats(c, d)
    assert lr == pytest.approx(M.frechet_distance_torch(*M.feature_stats(c), *M.feature_stats(d)),
                               rel=1e-6)
    assert abs(M.frechet_distance_feats(c, c)) < 1e-8


def test_fid_low_rank_against_closed_form():
    """N < D generated features against statistics sigma = L L^T: Tr sqrtm(S sigma) is the
    nuclear norm of Xc L / sqrt(N - 1), computed here without any matrix square root."""
    rng = np.random.RandomState(3)
    d, n = 48, 12
    x = rng.randn(n, d) * 2 + 0.3
    lower = np.tril(rng.randn(d, d)) + 3 * np.eye(d)
    sigma = lower @ lower.T
    mu = rng.randn(d)
    xc = x - x.mean(0)
    tr_covmean = np.abs(np.linalg.eigvals(xc @ lower @ lower.T @ xc.T)).clip(0) ** 0.5
    nuclear = np.linalg.svd(xc @ lower, compute_uv=False).sum()
    assert tr_covmean.sum() == pytest.approx(nuclear, rel=1e-6)  # the identity used
    diff = x.mean(0) - mu
    want = diff @ diff + np.trace(np.cov(x, rowvar=False)) + np.trace(sigma) \
        - 2 * nuclear / np.sqrt(n - 1)
    assert M.frechet_distance_to_stats(x, mu, sigma) == pytest.approx(want, rel=1e-9)
    # and between two small sets (both sides singular), against the same closed form
    y = rng.randn(9, d) @ lower.T
    yc = y - y.mean(0)
    diff = x.mean(0) - y.mean(0)
    want = diff @ diff + np.trace(np.cov(x, rowvar=False)) + np.trace(np.cov(y, rowvar=False)) \
        - 2 * np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt((n - 1) * 8)
    assert M.frechet_distance_feats(x, y) == pytest.approx(want, rel=1e-9)


def _improved_gan_is(preds, splits):
    """openai/improved-gan's get_inception_score, its loop written out."""
    scores = []
    for i in range(splits):
        part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.mean(np.sum(kl, 1))
        scores.append(np.exp(kl))
    return np.mean(scores), np.std(scores)


def test_inception_score_soft_probabilities():
    rng = np.random.RandomState(5)
    probs = rng.dirichlet(np.full(1008, 0.05), size=1003)  # soft, uneven splits (1003 / 10)
    mean, std = M.inception_score(probs, splits=10)
    want_mean, want_std = _improved_gan_is(probs, 10)
    assert mean == pytest.approx(want_mean, rel=1e-12) and std == pytest.approx(want_std, rel=1e-9)
    assert 1 < mean < 1008 and std > 0


def test_inception_score():
    assert M.inception_score(np.full((100, 1008), 1 / 1008)) == pytest.approx((1.0, 0.0), abs=1e-9)
    k = 7
    onehot = np.eye(1008)[np.arange(10 * 3 * k) % k]  # every split of 21 holds each class 3 times
    mean, std = M.inception_score(onehot, splits=10)
    assert mean == pytest.approx(k) and std == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError):
        M.inception_score(onehot[:5], splits=10)


def _brute_pr(ref, ev_, k):
    ref = torch.tensor(ref, dtype=torch.float64)
    ev_ = torch.tensor(ev_, dtype=torch.float64)
    rr = torch.cdist(ref, ref).sort(1).values[:, k]
    er = torch.cdist(ev_, ev_).sort(1).values[:, k]
    d = torch.cdist(ev_, ref)
    precision = (d <= rr[None]).any(1).double().mean().item()
    recall = (d <= er[:, None]).any(0).double().mean().item()
    return precision, recall, rr.numpy(), er.numpy()


def test_improved_pr_chunked_equals_brute_force():
    rng = np.random.RandomState(0)
    ref = rng.randn(53, 8).astype(np.float32)
    gen = (rng.randn(37, 8) * 1.3 + 0.4).astype(np.float32)
    p, r, rr, er = _brute_pr(ref, gen, 3)
    assert 0 < p < 1 and 0 < r < 1
    for chunk in (7, 16, 1000):
        assert np.allclose(M.knn_radii(ref, 3, chunk=chunk), rr, rtol=1e-4)
        assert np.allclose(M.knn_radii(gen, 3, chunk=chunk), er, rtol=1e-4)
        assert M.improved_precision_recall(ref, gen, k=3, chunk=chunk) == pytest.approx((p, r))
    radii = M.knn_radii(ref, 3, chunk=10)
    assert M.improved_precision_recall(ref, gen, k=3, chunk=11, ref_radii=radii) == \
        pytest.approx((p, r))


def test_improved_pr_extremes():
    rng = np.random.RandomState(1)
    x = rng.randn(60, 5).astype(np.float32)
    assert M.improved_precision_recall(x, x.copy(), k=5, chunk=13) == (1.0, 1.0)
    assert M.improved_precision_recall(x, x + 100, k=5, chunk=13) == (0.0, 0.0)


def _blobs(rng, n, centers):
    idx = rng.randint(len(centers), size=n)
    return (centers[idx] + 0.3 * rng.randn(n, centers.shape[1])).astype(np.float32)


def test_mode_dropping_lowers_recall_not_precision():
    """Generated samples cover 5 of the 10 real clusters: precision stays high, recall halves,
    and PRD's F_1/8 (precision side) beats F_8 (recall side)."""
    rng = np.random.RandomState(7)
    centers = rng.randn(10, 16) * 10
    real = _blobs(rng, 500, centers)
    fake = _blobs(rng, 500, centers[:5])
    precision, recall = M.improved_precision_recall(real, fake, k=5)
    assert precision > 0.9 and 0.35 < recall < 0.65 and precision > recall
    f8, f18, _ = M.prd(real, fake, num_clusters=20, num_runs=2)
    assert f18 > f8 and f18 > 0.8 and f8 < 0.7


def test_pr_unequal_sizes_subsamples_the_larger_set():
    rng = np.random.RandomState(8)
    ref = rng.randn(200, 8).astype(np.float32)
    gen = (rng.randn(60, 8) * 1.2).astype(np.float32)
    notes = []
    got = ev._pr(ref, gen, 5, 'cpu', ref_radii=M.knn_radii(ref, 5), seed=3, notes=notes)
    keep = np.sort(np.random.RandomState(3).choice(200, 60, replace=False))
    p, r, _, _ = _brute_pr(ref[keep], gen, 5)
    assert got == pytest.approx((p, r)) and 'subset of 60 of the 200 reference' in notes[0]


def test_prd():
    rng = np.random.RandomState(0)
    centers = rng.randn(10, 16) * 10
    a, b = _blobs(rng, 300, centers), _blobs(rng, 400, centers)
    # same distribution; b is larger, so a seeded subset of it is drawn
    f8, f18, note = M.prd(a, b, num_clusters=20, num_runs=1)
    assert 'subset of 300' in note and f8 > 0.9 and f18 > 0.9
    far = _blobs(rng, 300, centers + 100)
    p, r = M.prd_scores(a, far, num_clusters=20, num_runs=1)
    assert p.shape == r.shape == (1001,) and 0 <= p.min() and p.max() <= 1
    f8, f18 = M.prd_f_beta(p, r)
    assert f8 < 0.1 and f18 < 0.1
    with pytest.raises(ValueError):
        M.prd_scores(a, b[:10])


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def test_class_groups_cifar100_lt():
    counts = [int(500 * 0.01 ** (i / 99)) for i in range(100)]
    assert counts[0] == 500 and counts[-1] == 5
    g = ev.class_groups(counts)
    assert [len(g[k]) for k in ('head', 'medium', 'tail')] == [35, 35, 30]
    assert (g['head'] == np.arange(35)).all() and (g['tail'] == np.arange(70, 100)).all()
    assert ev.class_groups([101, 100, 20, 19])['medium'].tolist() == [1, 2]


def test_ref_feats_path():
    assert ev.ref_feats_path('stats/cifar100.train.npz') == 'stats/cifar100.train_feats.npz'


def test_load_fid_cache_errors(tmp_path):
    with pytest.raises(UserError, match='--fid_cache.*--make_stats'):
        ev.load_fid_cache(str(tmp_path / 'missing.npz'))
    p = str(tmp_path / 'c.npz')
    np.savez(p, mu=np.zeros(4))
    with pytest.raises(UserError, match='--fid_cache.*mu and sigma'):
        ev.load_fid_cache(p)
    np.savez(p, mu=np.zeros(4), sigma=np.zeros((3, 3)))
    with pytest.raises(UserError, match='--fid_cache'):
        ev.load_fid_cache(p)
    (tmp_path / 'junk.npz').write_bytes(b'junk')
    with pytest.raises(UserError, match='--fid_cache'):
        ev.load_fid_cache(str(tmp_path / 'junk.npz'))
    np.savez(p, mu=np.zeros(4), sigma=np.eye(4))
    mu, sigma = ev.load_fid_cache(p)
    assert mu.shape == (4,) and sigma.shape == (4, 4)
    assert ev.load_ref_feats(str(tmp_path / 'none_feats.npz')) is None
    np.savez(str(tmp_path / 'bad_feats.npz'), feats=np.zeros(5))
    with pytest.raises(UserError, match='bad_feats'):
        ev.load_ref_feats(str(tmp_path / 'bad_feats.npz'))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_evaluate_end_to_end(tmp_path):
    from pytorch_fid.fid_score import calculate_frechet_distance
    rng = np.random.RandomState(0)
    dim, per = 16, 40
    centers = rng.randn(3, dim) * 3
    ref_labels = np.repeat(np.arange(3), per)
    ref_feats = (centers[ref_labels] + rng.randn(3 * per, dim)).astype(np.float32)
    labels = np.tile(np.arange(3), per)
    feats = (centers[labels] + rng.randn(3 * per, dim)).astype(np.float32)
    probs = rng.dirichlet(np.ones(10), size=3 * per).astype(np.float32)
    cache = str(tmp_path / 'toy.npz')
    ref64 = ref_feats.astype(np.float64)
    np.savez(cache, mu=ref64.mean(0), sigma=np.cov(ref64, rowvar=False))
    np.savez(ev.ref_feats_path(cache), feats=ref_feats, labels=ref_labels,
             radii=M.knn_radii(ref_feats, 5), k=np.int64(5))
    ref = ev.load_ref_feats(ev.ref_feats_path(cache))
    res, rows = ev.evaluate(feats, probs, labels, cache, ref=ref, class_counts=[200, 50, 10],
                            prd_runs=2, min_fid_images=per)
    for key in ('IS', 'IS_std', 'FID', 'F8', 'F1/8', 'precision', 'recall'):
        assert isinstance(res[key], float), key
    for g in ('head', 'medium', 'tail'):
        assert res[f'classes_{g}'] == 1 and res[f'n_{g}'] == per
        for key in ('IS', 'FID', 'F8', 'F1/8', 'precision', 'recall'):
            assert isinstance(res[f'{key}_{g}'], float), (key, g)
    assert res['F8'] > 0.5 and res['precision'] > 0.5 and res['FID'] > 0
    f64 = feats.astype(np.float64)
    assert res['FID'] == pytest.approx(calculate_frechet_distance(
        f64.mean(0), np.cov(f64, rowvar=False), ref64.mean(0), np.cov(ref64, rowvar=False)),
        rel=1e-9)
    assert res['IS'] == pytest.approx(_improved_gan_is(probs.astype(np.float64), 10)[0], rel=1e-6)
    # each class's row is exactly class c's generated against class c's real features
    assert len(rows) == 3 and [r['group'] for r in rows] == ['head', 'medium', 'tail']
    for c, row in enumerate(rows):
        gen_c, ref_c = f64[labels == c], ref64[ref_labels == c]
        want_fid = calculate_frechet_distance(gen_c.mean(0), np.cov(gen_c, rowvar=False),
                                              ref_c.mean(0), np.cov(ref_c, rowvar=False))
        want_p, want_r, _, _ = _brute_pr(ref_c, gen_c, 5)
        assert row['fid'] == pytest.approx(want_fid, rel=1e-9)
        assert (row['precision'], row['recall']) == pytest.approx((want_p, want_r))
        assert row['n_generated'] == per and row['n_real'] == per
        group = ('head', 'medium', 'tail')[c]
        assert res[f'FID_{group}'] == pytest.approx(want_fid, rel=1e-9)
    out = tmp_path / 'per_class.csv'
    ev.write_per_class_csv(str(out), rows)
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ['class', 'train_count', 'group', 'n_generated', 'n_real', 'fid',
                              'precision', 'recall']
    assert table[2]['train_count'] == '10' and table[2]['group'] == 'tail'
    for line, row in zip(table, rows):
        for key in ('fid', 'precision', 'recall'):
            assert float(line[key]) == pytest.approx(row[key], abs=1e-6)
        assert int(line['n_real']) == per
    text = ev.format_results(res)
    assert 'FID' in text and 'tail' in text
    # below --min_fid_images on either side: blank per-class and group FID, with a note
    res_min, rows_min = ev.evaluate(feats, probs, labels, cache, ref=ref,
                                    class_counts=[200, 50, 10], prd=False, min_fid_images=per + 1)
    assert all(r['fid'] is None for r in rows_min) and res_min['FID_tail'] is None
    assert any('--min_fid_images' in note for note in res_min['notes'])
    assert rows_min[0]['precision'] == pytest.approx(rows[0]['precision'])
    # no reference features, no labels: the metrics that need them are None, with a note
    res2, rows2 = ev.evaluate(feats[:8], probs[:8], None, cache)
    assert res2['FID'] is not None and res2['IS'] is not None and rows2 == []
    assert res2['F8'] is None and res2['precision'] is None and res2['notes']
    # fewer generated images than dimensions: overall FID takes the exact low-rank form
    few = f64[:10]
    assert res2['FID'] is not None
    res5, _ = ev.evaluate(feats[:10], probs[:10], None, cache)
    lower = np.linalg.cholesky(np.cov(ref64, rowvar=False))
    fc = few - few.mean(0)
    diff = few.mean(0) - ref64.mean(0)
    want = diff @ diff + np.trace(np.cov(few, rowvar=False)) + np.trace(lower @ lower.T) \
        - 2 * np.linalg.svd(fc @ lower, compute_uv=False).sum() / 3
    assert res5['FID'] == pytest.approx(want, rel=1e-9)
    assert any('low-rank' in note for note in res5['notes'])
    # a group with too few generated images gets None, not an error
    res3, _ = ev.evaluate(feats, probs, labels, cache, ref=ref, class_counts=[200, 50, 10],
                          prd=False)
    keep = labels != 2
    keep[np.flatnonzero(labels == 2)[:3]] = True
    res4, rows4 = ev.evaluate(feats[keep], probs[keep], labels[keep], cache, ref=ref,
                              class_counts=[200, 50, 10], prd=False, min_fid_images=2)
    assert res4['n_tail'] == 3 and res4['precision_tail'] is None and res4['FID_tail'] is not None
    assert rows4[2]['precision'] is None
    assert res3['F8'] is None


def test_feature_stats_blocks_equal_np_cov():
    x = np.random.RandomState(0).randn(2500, 24).astype(np.float32)
    mu, sigma = M.feature_stats(x, block=700)
    x64 = x.astype(np.float64)
    assert np.allclose(mu, x64.mean(0), atol=1e-12)
    assert np.allclose(sigma, np.cov(x64, rowvar=False), atol=1e-12)
