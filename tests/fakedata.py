"""Small data sets in the real on-disk formats, written by the tests themselves."""
import os
import pickle

import numpy as np


def _fake_images(labels, seed):
    rng = np.random.RandomState(seed)
    data = rng.randint(0, 256, size=(len(labels), 3072)).astype(np.uint8)
    data[:, 0] = np.arange(len(labels)) % 256  # make rows distinguishable
    return data


def _dump(path, obj):
    with open(path, 'wb') as f:
        pickle.dump(obj, f)


def write_cifar10(root, per_class=50, test_per_class=5):
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder)
    labels = np.random.RandomState(1).permutation(np.repeat(np.arange(10), per_class))
    data = _fake_images(labels, 2)
    for i, chunk in enumerate(np.array_split(np.arange(len(labels)), 5)):
        _dump(os.path.join(folder, f'data_batch_{i + 1}'),
              {b'data': data[chunk], b'labels': labels[chunk].tolist()})
    tl = np.repeat(np.arange(10), test_per_class)
    _dump(os.path.join(folder, 'test_batch'), {b'data': _fake_images(tl, 3), b'labels': tl.tolist()})
    _dump(os.path.join(folder, 'batches.meta'), {b'label_names': [b'c%d' % i for i in range(10)]})
    return data.reshape(-1, 3, 32, 32), labels


def write_cifar100(root, per_class=20):
    folder = os.path.join(root, 'cifar-100-python')
    os.makedirs(folder)
    labels = np.random.RandomState(4).permutation(np.repeat(np.arange(100), per_class))
    data = _fake_images(labels, 5)
    _dump(os.path.join(folder, 'train'), {b'data': data, b'fine_labels': labels.tolist(),
                                         b'coarse_labels': (labels // 5).tolist()})
    tl = np.arange(100)
    _dump(os.path.join(folder, 'test'), {b'data': _fake_images(tl, 6), b'fine_labels': tl.tolist()})
    _dump(os.path.join(folder, 'meta'), {b'fine_label_names': [b'c'] * 100})
    return data.reshape(-1, 3, 32, 32), labels


INCEPTION_WEIGHTS_NAME = 'pt_inception-2015-12-05-6726825d.pth'


def random_inception():
    """The FID Inception architecture with random weights whose features still differ between
    images: Kaiming-normal convolutions and unit BatchNorm statistics (torchvision's own
    initialisation collapses every image onto nearly the same pool3 vector)."""
    import torch
    from score.inception import build_fid_inception
    torch.manual_seed(0)
    net = build_fid_inception()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
    return net


def write_random_inception(torch_home):
    """Put randomly initialised FID Inception weights where pytorch-fid caches the real ones
    ($TORCH_HOME/hub/checkpoints/), so the real loading path runs without a download."""
    import torch
    folder = os.path.join(str(torch_home), 'hub', 'checkpoints')
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, INCEPTION_WEIGHTS_NAME)
    torch.save(random_inception().state_dict(), path)
    return path
