"""Losses of the long-tailed classifier (`--classify`)."""
import torch.nn.functional as F


def weighted_loss(logits, y, weights):
    """Mean over the batch of weight * cross-entropy: logits B x C, y B, weights B (1 for real
    images, --synthetic_weight for generated ones, so real images keep their usual scale)."""
    return (F.cross_entropy(logits.float(), y, reduction='none') * weights).mean()
