"""The FID Inception-v3 of pytorch-fid, with its 1008-way classifier head kept for IS.

The network is pytorch-fid's (torchvision's Inception3 with the FIDInceptionA/C/E blocks and
the TF FID weights `pt_inception-2015-12-05-6726825d.pth`). One forward gives both
- pool3 features [B, 2048] (FID, PRD, improved precision/recall), and
- softmax over the 1008 logits [B, 1008] (IS).
The logits are pool3 @ fc.weight^T without the fc bias, as in the reference Inception-score code
(openai/improved-gan: `softmax/logits/MatMul`, i.e. before the bias add), which pytorch-ddpm's
metrics (pytorch-gan-metrics) reproduce; `fc_bias=True` keeps the bias instead.

The weights are never downloaded here: `weights_file` looks for them where pytorch-fid's own
download caches them (torch hub `checkpoints/`), or at `--inception_weights PATH`.
"""
import os
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import UserError

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    def tqdm(it=None, **kwargs):
        return it


def _fid_module():
    try:
        from pytorch_fid import inception as fid_inception
    except ImportError:
        raise UserError('the pytorch-fid package is missing; install it with '
                        '`pip install pytorch-fid`') from None
    return fid_inception


def weights_file_name():
    """File name of pytorch-fid's FID weights (pt_inception-2015-12-05-6726825d.pth)."""
    return os.path.basename(urlparse(_fid_module().FID_WEIGHTS_URL).path)


def weights_file(path=None):
    """Path of the FID Inception weights; raise UserError if the file is absent (never downloads).

    path: the `--inception_weights` flag, or None for pytorch-fid's cache location
    `<torch hub dir>/checkpoints/pt_inception-2015-12-05-6726825d.pth`.
    """
    url = _fid_module().FID_WEIGHTS_URL
    if path:
        path = os.path.expanduser(os.fspath(path))
        if not os.path.isfile(path):
            raise UserError(f'--inception_weights {path}: file not found; download {url} '
                            f'there or pass the path of pt_inception-2015-12-05-6726825d.pth')
        return path
    folder = os.path.join(torch.hub.get_dir(), 'checkpoints')
    name = weights_file_name()
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise UserError(f'FID Inception weights {name} not found in {folder}; download {url} '
                        f'into that folder, or pass --inception_weights PATH')
    return path


def build_fid_inception():
    """pytorch-fid's FID Inception-v3 architecture (1008 classes) with untrained weights.

    Same module layout as `pytorch_fid.inception.fid_inception_v3()`, built without its download.
    """
    m = _fid_module()
    net = m._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = m.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = m.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = m.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = m.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = m.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = m.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = m.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = m.FIDInceptionE_1(1280)
    net.Mixed_7c = m.FIDInceptionE_2(2048)
    return net


class FIDInceptionV3(nn.Module):
    """forward(x: [B, 3, H, W] float in [0, 1]) -> (pool3 [B, 2048] float32, probs [B, 1008] float32).

    Preprocessing as pytorch-fid's InceptionV3 wrapper: bilinear resize to 299 x 299
    (align_corners=False), then 2x - 1.
    """

    def __init__(self, inception, fc_bias=False):
        super().__init__()
        i = inception
        self.features = nn.Sequential(
            i.Conv2d_1a_3x3, i.Conv2d_2a_3x3, i.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            i.Conv2d_3b_1x1, i.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            i.Mixed_5b, i.Mixed_5c, i.Mixed_5d, i.Mixed_6a, i.Mixed_6b, i.Mixed_6c, i.Mixed_6d,
            i.Mixed_6e, i.Mixed_7a, i.Mixed_7b, i.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1)))
        self.fc = i.fc
        self.fc_bias = fc_bias

    def forward(self, x):
        x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
        x = 2 * x - 1
        pool3 = self.features(x).flatten(1).float()
        with torch.autocast(device_type=pool3.device.type, enabled=False):
            logits = F.linear(pool3, self.fc.weight.float(),
                              self.fc.bias.float() if self.fc_bias else None)
            probs = torch.softmax(logits, dim=1)
        return pool3, probs


def load_inception(weights_path=None, device='cpu', fc_bias=False):
    """Load the FID Inception (eval mode, no grad) from `weights_file(weights_path)` onto `device`.

    Raises UserError when the file is absent, unreadable or not the FID Inception state dict.
    """
    path = weights_file(weights_path)
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # corrupt/truncated/not a torch file
        raise UserError(f'cannot read the Inception weights {path} ({type(e).__name__}); '
                        f'download {_fid_module().FID_WEIGHTS_URL} again') from None
    net = build_fid_inception()
    try:
        if not isinstance(state, dict):
            raise TypeError('not a state dict')
        net.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as e:
        raise UserError(f'{path} is not the FID Inception state dict '
                        f'({str(e).splitlines()[0][:120]}); use pt_inception-2015-12-05-6726825d.pth '
                        f'from {_fid_module().FID_WEIGHTS_URL}') from None
    model = FIDInceptionV3(net, fc_bias=fc_bias).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _to_batch(x):
    """ndarray/tensor [B, 3, H, W] (uint8 0..255 or float 0..1) -> float32 tensor in [0, 1]."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'images must be arrays or tensors, got {type(x).__name__}')
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f'images must be N x 3 x H x W, got shape {tuple(x.shape)}')
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    return x.float()


def _batches(images, batch_size):
    if isinstance(images, (np.ndarray, torch.Tensor)):
        for i in range(0, len(images), batch_size):
            yield _to_batch(images[i:i + batch_size])
        return
    for item in images:
        x = _to_batch(item)
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size]


def compute_features(images, net, batch_size=200, device=None, amp='none', progress=True):
    """Inception pool3 features and class probabilities of images.

    images: N x 3 x H x W array/tensor (float in [0, 1] or uint8), or an iterable of such batches
    (items may be (images, labels) tuples; only the images are used).
    net: a model from `load_inception`. device: defaults to the net's device.
    amp: 'none' | 'bf16' | 'fp16' (autocast; fp16 needs CUDA).
    Returns (feats float32 [N, 2048], probs float32 [N, 1008]) numpy arrays.
    """
    if device is None:
        device = next(net.parameters()).device
    device = torch.device(device)
    if amp not in ('none', 'bf16', 'fp16'):
        raise UserError(f"--amp {amp}: choose one of none, bf16, fp16")
    if amp == 'fp16' and device.type != 'cuda':
        raise UserError('--amp fp16 needs a CUDA device; use --amp bf16 or none on CPU')
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(amp)
    total = len(images) if isinstance(images, (np.ndarray, torch.Tensor)) else None
    feats, probs = [], []
    bar = tqdm(total=total, disable=not progress, desc='inception', unit='img', leave=False,
               dynamic_ncols=True)
    with torch.no_grad():
        for x in _batches(images, batch_size):
            x = x.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
                f, p = net(x)
            feats.append(f.float().cpu().numpy())
            probs.append(p.float().cpu().numpy())
            bar.update(len(x))
    bar.close()
    if not feats:
        raise ValueError('compute_features got no images')
    return np.concatenate(feats).astype(np.float32, copy=False), \
        np.concatenate(probs).astype(np.float32, copy=False)
