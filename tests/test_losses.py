"""The long-tail losses of --classify and class-balanced re-sampling, against the formulas of
the papers written out here independently of recognition/losses.py:

- LDAM (Cao et al., NeurIPS 2019): margins m_c = K / n_c^{1/4} with max_c m_c = 0.5; loss
  -log(e^{s(z_y - m_y)} / (e^{s(z_y - m_y)} + sum_{j != y} e^{s z_j})), s = 30, on the cosine
  head's outputs z in [-1, 1].
- DRW (same paper): weights 1 before the switch epoch, (1 - beta) / (1 - beta^{n_c}) normalised
  to sum to C from it on (beta 0.9999), as LDAM-DRW's `idx = epoch // 160`.
- Balanced Softmax (Ren et al., NeurIPS 2020): -log(n_y e^{z_y} / sum_j n_j e^{z_j}).
- Logit adjustment (Menon et al., ICLR 2021): -log(e^{z_y + tau log pi_y} / sum_j e^{z_j + tau
  log pi_j}).
- Weighted normalisation: sum_i w_{y_i} g_i l_i / sum_i w_{y_i}.
- Re-sampling: every class equally often over an epoch (binomial tolerance), a pure function of
  (seed, epoch), generated images once each.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import recognition.data as RD
import recognition.losses as L
import recognition.models as M
from utils import UserError

COUNTS = [400, 239, 143, 86, 51, 30, 18, 11, 6, 4]   # MNIST-LT at 0.01


def batch(b=12, c=4, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * scale, torch.randint(c, (b,), generator=g)


def nll(scores, y):
    """-log softmax(scores)[y] per row, written out."""
    return torch.stack([-(scores[i, y[i]] - torch.logsumexp(scores[i], 0))
                        for i in range(len(y))])


# ---------------------------------------------------------------------------------------------
# LDAM margins, effective-number weights, the DRW switch

def test_ldam_margins_follow_n_to_the_minus_quarter_with_max_half():
    m = L.ldam_margins(COUNTS)
    want = [0.5 * (4 / n) ** 0.25 for n in COUNTS]      # rarest class (4 images) gets 0.5
    np.testing.assert_allclose(m, want, rtol=1e-12)
    assert m.max() == pytest.approx(0.5) and m.argmax() == len(COUNTS) - 1
    np.testing.assert_allclose(m[0] / m[-1], (4 / 400) ** 0.25)
    np.testing.assert_allclose(L.ldam_margins([16, 1]), [0.25, 0.5])   # 16^(-1/4) = 1/2
    assert L.ldam_margins([7, 7, 7]).tolist() == [0.5] * 3


def test_effective_number_weights():
    # counts 1 and 2, beta 0.5: raw (1 - 0.5) / (1 - 0.5) = 1 and 0.5 / 0.75 = 2/3; sum to 2
    np.testing.assert_allclose(L.effective_number_weights([1, 2], 0.5), [1.2, 0.8])
    w = L.effective_number_weights(COUNTS, 0.9999)
    raw = np.array([(1 - 0.9999) / (1 - 0.9999 ** n) for n in COUNTS])
    np.testing.assert_allclose(w, raw / raw.sum() * 10, rtol=1e-12)
    assert w.sum() == pytest.approx(10) and (np.diff(w) > 0).all()    # rarer class, larger
    # beta -> 0: uniform (LDAM-DRW's betas[0] = 0 before the switch); beta -> 1: 1 / n_c
    np.testing.assert_allclose(L.effective_number_weights(COUNTS, 0.0), np.ones(10))
    inv = 1 / np.array(COUNTS, float)
    np.testing.assert_allclose(L.effective_number_weights(COUNTS, 1 - 1e-9), inv / inv.sum() * 10,
                               rtol=1e-5)


@pytest.mark.parametrize('drw_epoch', [0, 1, 24, 160])
def test_drw_weights_switch_exactly_at_the_drw_epoch(drw_epoch):
    eff = L.effective_number_weights(COUNTS, 0.9999)
    for name in ('ce_drw', 'ldam_drw'):
        loss = L.LongTailLoss(name, COUNTS, drw_epoch=drw_epoch)
        for epoch in range(max(drw_epoch - 2, 0), drw_epoch + 3):
            w = loss.class_weights(epoch)
            # LDAM-DRW: idx = epoch // drw_epoch, beta = [0, 0.9999][idx] (epoch 0-based)
            if epoch < drw_epoch:
                assert w is None, (name, epoch)
                assert (L.drw_weights(COUNTS, epoch, drw_epoch) == 1).all()
            else:
                np.testing.assert_allclose(w.numpy(), eff, rtol=1e-6)
    for name in ('ce', 'balanced_softmax', 'logit_adjust'):   # never re-weighted
        assert L.LongTailLoss(name, COUNTS, drw_epoch=0).class_weights(500) is None


# ---------------------------------------------------------------------------------------------
# the loss values

def test_weighted_normalisation():
    logits, y = batch(b=10, c=3)
    l = nll(logits, y)
    w = torch.tensor([0.5, 1.0, 3.0])
    g = torch.tensor([1.0] * 6 + [0.25] * 4)
    # no generated images: exactly F.cross_entropy(weight=w)
    assert L.weighted_ce(logits, y, None, w).item() == pytest.approx(
        F.cross_entropy(logits, y, weight=w).item(), rel=1e-6)
    # uniform class weights: the batch mean of g_i l_i (the classifier's loss before --cls_loss)
    assert L.weighted_ce(logits, y, g).item() == pytest.approx((g * l).mean().item(), rel=1e-6)
    assert L.weighted_loss(logits, y, g).item() == pytest.approx((g * l).mean().item(), rel=1e-6)
    # both: sum w_y g l / sum w_y
    want = (w[y] * g * l).sum() / w[y].sum()
    assert L.weighted_ce(logits, y, g, w).item() == pytest.approx(want.item(), rel=1e-6)
    # weight 0 drops generated images from the numerator only
    g0 = torch.tensor([1.0] * 6 + [0.0] * 4)
    want = (w[y] * l)[:6].sum() / w[y].sum()
    assert L.weighted_ce(logits, y, g0, w).item() == pytest.approx(want.item(), rel=1e-6)


def test_ldam_loss_is_the_margin_formula_on_scaled_cosines():
    counts = [100, 10, 1]
    cos, y = batch(b=9, c=3)
    cos = cos.tanh()                                     # cosine-head outputs in [-1, 1]
    m = [0.5 * (1 / n) ** 0.25 for n in counts]
    scores = 30 * cos.clone()
    for i in range(len(y)):
        scores[i, y[i]] = 30 * (cos[i, y[i]] - m[y[i]])
    want = nll(scores, y).mean()
    loss = L.LongTailLoss('ldam_drw', counts, drw_epoch=5)
    assert loss(cos, y, None, epoch=4).item() == pytest.approx(want.item(), rel=1e-5)
    # from the DRW epoch: F.cross_entropy(s * output, weight=w) as LDAM-DRW computes it
    w = torch.tensor(L.effective_number_weights(counts, 0.9999), dtype=torch.float32)
    want = (w[y] * nll(scores, y)).sum() / w[y].sum()
    assert loss(cos, y, None, epoch=5).item() == pytest.approx(want.item(), rel=1e-5)
    # the margin only ever makes the true class harder: the loss exceeds plain CE on s * cos
    assert loss(cos, y, None, 0).item() > F.cross_entropy(30 * cos, y).item()


def test_balanced_softmax_and_logit_adjustment():
    counts = [50, 20, 5, 1]
    logits, y = batch(b=16, c=4)
    n = torch.tensor(counts, dtype=torch.float64)
    z = logits.double()
    bs = torch.stack([-torch.log(n[y[i]] * z[i, y[i]].exp() / (n * z[i].exp()).sum())
                      for i in range(len(y))]).mean()
    got = L.LongTailLoss('balanced_softmax', counts)(logits, y)
    assert got.item() == pytest.approx(bs.item(), rel=1e-5)
    prior = n / n.sum()
    for tau in (0.0, 0.5, 1.0, 2.0):
        adj = z + tau * prior.log()
        want = nll(adj, y).mean()
        got = L.LongTailLoss('logit_adjust', counts, la_tau=tau)(logits, y)
        assert got.item() == pytest.approx(want.item(), rel=1e-5), tau
    # tau 1 is balanced softmax; tau 0 is plain cross-entropy
    assert L.LongTailLoss('logit_adjust', counts, la_tau=1.0)(logits, y).item() == \
        pytest.approx(bs.item(), rel=1e-5)
    assert L.LongTailLoss('logit_adjust', counts, la_tau=0.0)(logits, y).item() == \
        pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    # generated images keep their weight g: the batch mean of g_i l_i
    g = torch.linspace(0, 1, 16)
    want = (g * nll(z + prior.log(), y)).mean()
    got = L.LongTailLoss('logit_adjust', counts)(logits, y, g)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert L.LongTailLoss('ce', counts)(logits, y).item() == pytest.approx(
        F.cross_entropy(logits, y).item(), rel=1e-6)


def test_losses_need_every_class_and_record_their_parameters():
    for name in ('ce_drw', 'ldam_drw', 'balanced_softmax', 'logit_adjust'):
        with pytest.raises(UserError, match=f'--cls_loss {name}: class.*\\[2\\]'):
            L.LongTailLoss(name, [5, 3, 0])
    L.LongTailLoss('ce', [5, 3, 0])                 # plain CE uses no counts
    with pytest.raises(UserError, match='--cls_loss'):
        L.LongTailLoss('focal', [5, 3])
    keys = {frozenset(L.loss_settings(n, 160, 1.0)) for n in L.LOSSES}
    assert len(keys) == 1                           # every record has the same keys
    s = L.loss_settings('ldam_drw', 160, 1.0)
    assert (s['drw_epoch'], s['drw_beta'], s['ldam_s'], s['ldam_max_margin']) == \
        (160, 0.9999, 30.0, 0.5)
    assert s['cosine_head'] and s['la_tau'] is None
    s = L.loss_settings('logit_adjust', 160, 0.5)
    assert s['la_tau'] == 0.5 and s['drw_epoch'] is None and not s['cosine_head']
    assert L.counts_source(False, False, True) == 'real'
    assert L.counts_source(False, True, True) == 'real+generated'
    assert L.counts_source(True, False, True) == 'generated'
    assert L.counts_source(False, True, False) == 'real'


# ---------------------------------------------------------------------------------------------
# the cosine head

@pytest.mark.parametrize('arch,size', [('cnn', 8), ('resnet32', 16), ('resnet18', 32)])
def test_cosine_head_outputs_are_cosines(arch, size):
    torch.manual_seed(0)
    net = M.build_classifier(arch, 5, cosine=True).eval()
    assert isinstance(net.head, M.NormedLinear) and net.head.weight.shape == (net.feature_dim, 5)
    np.testing.assert_allclose(net.head.weight.norm(dim=0).detach().numpy(), 1, rtol=1e-5)
    x = torch.randn(4, 3, size, size) * 50
    out = net(x)
    assert out.shape == (4, 5) and out.abs().max() <= 1 + 1e-6
    feats = net.features(x)
    want = F.cosine_similarity(feats[:, :, None], net.head.weight[None], dim=1)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert not isinstance(M.build_classifier(arch, 5).head, M.NormedLinear)


def test_cosine_head_range_extremes_and_predict_scale():
    head = M.NormedLinear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, -5.0]]))
    x = torch.tensor([[7.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    out = head(x)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [0.0, 0.0],
                                                  [1 / math.sqrt(2), -1 / math.sqrt(2)]]))

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, x):
            return self.head(x)
    loader = [(x, torch.zeros(3, dtype=torch.long))]
    probs, _ = M.predict(Tiny(), loader, torch.device('cpu'))
    torch.testing.assert_close(probs, (30 * out).softmax(1))   # the probabilities LDAM trained


# ---------------------------------------------------------------------------------------------
# class-balanced re-sampling

def test_resampled_epochs_are_class_balanced():
    targets = np.repeat(np.arange(10), COUNTS)        # 988 real images, 400 .. 4 per class
    n_generated = 50
    n = len(targets) + n_generated
    seen = np.zeros(10, np.int64)
    epochs = 40
    for epoch in range(epochs):
        s = RD.EpochBatchSampler(n, 64, 7, epoch, resample_targets=targets)
        items = np.concatenate(s.batches())
        assert len(items) == n                          # an epoch keeps its length
        real = items[items < len(targets)]
        assert len(real) == len(targets)
        assert sorted(items[items >= len(targets)].tolist()) == list(range(len(targets), n))
        seen += np.bincount(targets[real], minlength=10)
    # each class drawn with probability 1/10 per draw: binomial mean and std per class
    draws = epochs * len(targets)
    mean, std = draws / 10, math.sqrt(draws * 0.1 * 0.9)
    assert np.abs(seen - mean).max() < 4.5 * std, seen
    # the plain sampler sees the long tail instead
    plain = np.concatenate(RD.EpochBatchSampler(len(targets), 64, 7, 0).batches())
    assert np.bincount(targets[plain], minlength=10).tolist() == COUNTS


def test_resampling_is_a_function_of_seed_and_epoch():
    targets = np.repeat(np.arange(3), [30, 6, 2])
    a = RD.EpochBatchSampler(38, 8, 1, 4, resample_targets=targets).batches()
    assert a == RD.EpochBatchSampler(38, 8, 1, 4, resample_targets=targets).batches()
    assert a != RD.EpochBatchSampler(38, 8, 1, 5, resample_targets=targets).batches()
    assert a != RD.EpochBatchSampler(38, 8, 2, 4, resample_targets=targets).batches()
    assert list(RD.EpochBatchSampler(38, 8, 1, 4, 2, resample_targets=targets)) == a[2:]
    # the draws of a class are spread over its images (uniform within the class)
    items = np.concatenate([np.concatenate(RD.EpochBatchSampler(38, 8, 1, e,
                                                                resample_targets=targets).batches())
                            for e in range(30)])
    assert set(items[targets[items] == 2]) == {36, 37}
    assert len(set(items[targets[items] == 0])) > 25
    # without re-sampling the batches are the seeded permutation they always were
    g = torch.Generator().manual_seed(1 * 1_000_003 + 4)
    perm = torch.randperm(38, generator=g).tolist()
    assert RD.EpochBatchSampler(38, 8, 1, 4).batches() == [perm[i:i + 8] for i in range(0, 38, 8)]
