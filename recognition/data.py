"""Training data of the classifier: real images followed by extra ones, deterministic epoch
batches (a pure function of seed and epoch, so a resumed run sees the same batches), and the
crop / flip augmentation of the protocol."""
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

import dataset as D


def augment(x, pad, hflip=True):
    """Random crop with `pad` pixels of zero (black, -1) padding, then (with `hflip`) a random
    horizontal flip, per image; x: B x 3 x H x W in [-1, 1] -> same shape. Draws from the global
    torch RNG (offsets first, then flips, whether or not they are used, so the stream does not
    depend on `hflip`)."""
    if pad <= 0 and not hflip:
        return x
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (b, 2))
    flips = torch.rand(b) < 0.5
    out = x
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
        out = torch.stack([padded[i, :, oy:oy + h, ox:ox + w]
                           for i, (oy, ox) in enumerate(offsets.tolist())])
    if not hflip:
        return out
    return torch.where(flips.view(-1, 1, 1, 1), out.flip(-1), out)


class TrainingSet(Dataset):
    """Real images followed by generated ones: items (x in [-1, 1], y, is_generated)."""

    def __init__(self, real, synthetic):
        self.parts = [p for p in (real, synthetic) if p is not None]
        self.n_real = len(real) if real is not None else 0
        self.targets = np.concatenate([p.targets for p in self.parts])

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        if i < self.n_real:
            x, y = self.parts[0][i]
            return x, y, False
        x, y = self.parts[-1][i - self.n_real]
        return x, y, True


class EpochBatchSampler(Sampler):
    """Batches of one epoch from batch `start` on: the permutation of epoch e comes from a
    torch.Generator seeded with seed * 1_000_003 + e, so a resumed run sees the same batches.
    A last batch of a single image is dropped (BatchNorm needs two).

    `resample_targets` (--cls_resample): the labels of the first len(resample_targets) items
    (the real images). They are then replaced by as many draws with replacement, each class
    equally likely and uniform within a class (per-image probability proportional to
    1 / n_{y}); the other items (generated images) stay once each; then the whole epoch is
    permuted. The epoch keeps its length n; the draws come from the same seeded generator."""

    def __init__(self, n, batch_size, seed, epoch, start=0, resample_targets=None):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.start = epoch, start
        self.resample_targets = resample_targets

    def batches(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.resample_targets is None:
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            items = torch.cat([balanced_draw(self.resample_targets, g),
                               torch.arange(len(self.resample_targets), self.n)])
            perm = items[torch.randperm(self.n, generator=g)].tolist()
        out = [perm[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        return out[:-1] if len(out) > 1 and len(out[-1]) < 2 else out

    def __iter__(self):
        return iter(self.batches()[self.start:])

    def __len__(self):
        return max(len(self.batches()) - self.start, 0)


def balanced_draw(targets, generator):
    """len(targets) indices into `targets` (int64 tensor), drawn with replacement so that every
    class present is equally likely (probability 1 / (K n_c) per item of class c, K classes)."""
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    counts = torch.bincount(targets).double()
    weights = 1.0 / counts[targets]
    return torch.multinomial(weights, len(targets), replacement=True, generator=generator)


def synthetic_dataset(images, labels, num_class, img_size):
    return D.ArrayImageDataset(torch.from_numpy(images), labels, num_class, img_size,
                               hflip=False)


def evaluation_loader(data, batch_size, num_workers=0):
    """A loader over `data` in order for scoring; it draws its worker seed from a generator of
    its own, so evaluating never moves the global RNG (training after an evaluation sees the
    same crops and flips whatever --cls_eval_every says)."""
    return DataLoader(data, batch_size=batch_size, num_workers=num_workers,
                      generator=torch.Generator())


def make_loader(data, sampler, cfg, device):
    # generator=: the loader's own seed draw must not touch the global RNG (exact resumption)
    return DataLoader(data, batch_sampler=sampler, num_workers=cfg.num_workers,
                      pin_memory=device.type == 'cuda', generator=torch.Generator())
