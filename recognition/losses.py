"""Losses of the long-tailed classifier (`--classify --cls_loss`), each the formula of its paper.

Notation: a batch of B images with labels y_i, logits z_i (B x C), per-image weights g_i (1 for a
real image, --synthetic_weight for a generated one) and per-class training counts n_c (C
numbers, the real long-tailed training set unless --cls_counts_with_synthetic).

- `ce`: cross-entropy.
- `ce_drw`: cross-entropy with deferred re-weighting (DRW, Cao et al., "Learning Imbalanced
  Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019): uniform class weights
  before epoch `drw_epoch` (0-based), from then on the effective-number weights of Cui et al.
  (CVPR 2019) w_c = (1 - beta) / (1 - beta^{n_c}), beta = 0.9999, normalised to sum to C.
  LDAM-DRW's cifar_train.py: `idx = epoch // 160; beta = [0, 0.9999][idx]`.
- `ldam_drw`: the LDAM loss with DRW (Cao et al.): the model has a cosine head (outputs in
  [-1, 1], recognition.models.NormedLinear); the logit of the true class is reduced by the
  margin m_y, m_c = K / n_c^{1/4} with K such that max_c m_c = 0.5, and every logit is scaled by
  s = 30 before the cross-entropy: CE(s * (z_i - m_{y_i} e_{y_i}), y_i).
- `balanced_softmax`: Balanced Softmax (Ren et al., "Balanced Meta-Softmax for Long-Tailed
  Visual Recognition", NeurIPS 2020): CE(z_i + log n, y_i) in training; the test uses z.
- `logit_adjust`: the logit-adjusted loss (Menon et al., "Long-Tail Learning via Logit
  Adjustment", ICLR 2021): CE(z_i + tau log pi, y_i) with the class prior pi_c = n_c / sum n,
  tau = --cls_la_tau (1.0); the test uses z. With tau = 1 it equals balanced_softmax (log pi and
  log n differ by a constant, which the softmax ignores).

Normalisation (`weighted_ce`): sum_i w_{y_i} g_i l_i / sum_i w_{y_i}, l_i the per-image
cross-entropy and w the class weights (1 without DRW). Without generated images (g = 1) this is
exactly `F.cross_entropy(weight=w)` (the weights of the batch's labels in the denominator, as
LDAM-DRW normalises); with uniform class weights it is the batch mean of g_i l_i, the loss the
classifier always had (`weighted_loss`), so --synthetic_weight keeps its meaning (a generated
image counts g times a real image of its class) before and after the DRW switch.
"""
import numpy as np
import torch
import torch.nn.functional as F

from utils import UserError

LOSSES = ('ce', 'ce_drw', 'ldam_drw', 'balanced_softmax', 'logit_adjust')
LDAM_S = 30.0          # scale of the cosine logits (LDAM-DRW's s)
LDAM_MAX_M = 0.5       # the largest margin (LDAM-DRW's max_m)
DRW_BETA = 0.9999      # effective-number beta of DRW


def uses_cosine_head(name):
    """Whether the loss `name` trains a model whose last layer is the cosine NormedLinear."""
    return name == 'ldam_drw'


def uses_counts(name):
    """Whether the loss `name` needs the per-class training counts."""
    return name != 'ce'


def ldam_margins(counts, max_m=LDAM_MAX_M):
    """LDAM margins m_c = K n_c^{-1/4}, K chosen so that max_c m_c = max_m: float64 length C
    (the rarest class gets max_m). counts: C positive numbers."""
    m = 1.0 / np.power(np.asarray(counts, np.float64), 0.25)
    return m * (max_m / m.max())


def effective_number_weights(counts, beta=DRW_BETA):
    """Class-balanced weights of Cui et al.: (1 - beta) / (1 - beta^{n_c}), normalised to sum to
    C: float64 length C, decreasing in n_c (uniform for beta = 0)."""
    counts = np.asarray(counts, np.float64)
    w = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return w / w.sum() * len(counts)


def drw_weights(counts, epoch, drw_epoch, beta=DRW_BETA):
    """Class weights of deferred re-weighting in epoch `epoch` (0-based): all ones before
    `drw_epoch`, `effective_number_weights(counts, beta)` from it on. float64 length C."""
    if epoch < drw_epoch:
        return np.ones(len(counts), np.float64)
    return effective_number_weights(counts, beta)


def weighted_ce(logits, y, sample_weight=None, class_weight=None):
    """sum_i w_{y_i} g_i CE(logits_i, y_i) / sum_i w_{y_i} (see the module docstring).

    logits B x C (any float dtype; computed in float32), y B int64, sample_weight g: B floats
    >= 0 or None (all 1), class_weight w: C floats > 0 or None (all 1). Returns a scalar.
    """
    loss = F.cross_entropy(logits.float(), y, reduction='none')
    if sample_weight is not None:
        loss = loss * sample_weight
    if class_weight is None:
        return loss.mean()
    w = class_weight.to(loss.device, torch.float32)[y]
    return (w * loss).sum() / w.sum()


def weighted_loss(logits, y, weights):
    """Mean over the batch of weight * cross-entropy: logits B x C, y B, weights B (1 for real
    images, --synthetic_weight for generated ones). `weighted_ce` without class weights."""
    return weighted_ce(logits, y, weights)


def ldam_logits(cosines, y, margins, s=LDAM_S):
    """s * (cosines - m_y at the true class): cosines B x C in [-1, 1], margins C floats."""
    m = margins.to(cosines.device, torch.float32)[y]
    onehot = F.one_hot(y, cosines.shape[1]).to(torch.float32)
    return s * (cosines.float() - m[:, None] * onehot)


def log_prior_offset(counts, tau=1.0):
    """tau * log(n_c / sum n): float64 length C, what logit adjustment adds to the logits
    (balanced softmax adds log n_c, the same up to a constant)."""
    counts = np.asarray(counts, np.float64)
    return tau * np.log(counts / counts.sum())


def counts_source(synthetic_only, counts_with_synthetic, has_generated):
    """Which images the loss's class counts n_c count: 'real' (the real long-tailed training
    set, the default), 'real+generated' (--cls_counts_with_synthetic) or 'generated' (CAS:
    --synthetic_only trains on generated images alone)."""
    if has_generated and synthetic_only:
        return 'generated'
    return 'real+generated' if has_generated and counts_with_synthetic else 'real'


class LongTailLoss:
    """The loss of --cls_loss `name` for class counts `counts` (C positive numbers):
    `loss(logits, y, sample_weight, epoch)` -> scalar. Its state is a pure function of the
    epoch (0-based), so a resumed run computes the same loss."""

    def __init__(self, name, counts, drw_epoch=160, la_tau=1.0):
        if name not in LOSSES:
            raise UserError(f'--cls_loss {name!r}: choose one of {", ".join(LOSSES)}')
        counts = np.asarray(counts, np.float64)
        if uses_counts(name) and (counts <= 0).any():
            empty = np.flatnonzero(counts <= 0).tolist()
            raise UserError(f'--cls_loss {name}: class(es) {empty[:10]} have no training images; '
                            f'the loss needs at least one per class (use --cls_loss ce, or '
                            f'--cls_counts_with_synthetic with generated images of them)')
        self.name, self.counts = name, counts
        self.drw_epoch, self.la_tau = int(drw_epoch), float(la_tau)
        self.margins = torch.from_numpy(ldam_margins(counts)).float()
        tau = 1.0 if name == 'balanced_softmax' else self.la_tau
        self.offset = torch.from_numpy(log_prior_offset(counts, tau)).float()

    def class_weights(self, epoch):
        """C float32 class weights of epoch `epoch`, or None (uniform)."""
        if self.name in ('ce_drw', 'ldam_drw') and epoch >= self.drw_epoch:
            return torch.from_numpy(drw_weights(self.counts, epoch, self.drw_epoch)).float()
        return None

    def __call__(self, logits, y, sample_weight=None, epoch=0):
        if self.name == 'ldam_drw':
            logits = ldam_logits(logits, y, self.margins)
        elif self.name in ('balanced_softmax', 'logit_adjust'):
            logits = logits.float() + self.offset.to(logits.device)
        return weighted_ce(logits, y, sample_weight, self.class_weights(epoch))


def loss_settings(name, drw_epoch, la_tau):
    """The parameters of --cls_loss `name` for the eval.jsonl record: the ones it does not use
    are None, so every record has the same keys."""
    drw = name in ('ce_drw', 'ldam_drw')
    ldam = name == 'ldam_drw'
    return {'cls_loss': name, 'drw_epoch': int(drw_epoch) if drw else None,
            'drw_beta': DRW_BETA if drw else None,
            'la_tau': float(la_tau) if name == 'logit_adjust' else None,
            'ldam_s': LDAM_S if ldam else None, 'ldam_max_margin': LDAM_MAX_M if ldam else None,
            'cosine_head': uses_cosine_head(name)}


def training_settings(cfg, has_generated):
    """The loss part of a run (eval.jsonl record, checkpoint): `loss_settings` of --cls_loss,
    `loss_counts` (`counts_source`; None for ce, which uses no counts) and `resample`."""
    source = counts_source(cfg.synthetic_only, cfg.cls_counts_with_synthetic, has_generated)
    return dict(loss_settings(cfg.cls_loss, cfg.cls_drw_epoch, cfg.cls_la_tau),
                loss_counts=source if uses_counts(cfg.cls_loss) else None,
                resample=bool(cfg.cls_resample))
