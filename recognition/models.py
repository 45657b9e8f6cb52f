"""Classifiers for long-tailed recognition (`main.py --classify`, see recognition/classify.py).

- `ResNet32`: the CIFAR ResNet of He et al. (2016) as LDAM-DRW's resnet_cifar builds it:
  a 3x3 conv with 16 channels, 3 stages of 5 basic blocks (16, 32, 64 channels, strides 1, 2, 2),
  option-A shortcuts (stride-2 subsampling and zero-padded channels, no parameters), global
  average pooling and a linear layer; kaiming-normal init. 0.46M parameters for 10 classes.
- `SmallCNN`: three conv layers for the 8x8 digits. (The judge of generated digits,
  scripts/proxy_eval.py's DigitNet, is another network on purpose: its docstring says why.)
- torchvision ResNets (resnet18/34/50/..., resnext, wide_resnet) built with weights=None
  (random init; nothing is ever downloaded) for ImageNet-LT and iNaturalist.

Every model maps float B x 3 x H x W images in [-1, 1] to B x num_class logits as
`head(features(x))`: `features` gives the penultimate (pooled) B x feature_dim vectors, `head` is
the last layer (nn.Linear(feature_dim, num_class)), so the feature-level augmentation can encode
images and re-train the head alone. `build_classifier(..., cosine=True)` replaces the head by
`NormedLinear` (LDAM-DRW's cosine classifier, used with --cls_loss ldam_drw): its outputs are
cosines in [-1, 1], which the loss scales by s = 30; `predict` scales them likewise, so the
probabilities are those the loss trained.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from recognition.losses import LDAM_S
from utils import UserError

TORCHVISION_ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
                     'resnext50_32x4d', 'resnext101_32x8d', 'wide_resnet50_2',
                     'wide_resnet101_2')
ARCHS = ('resnet32', 'cnn') + TORCHVISION_ARCHS


class OptionAShortcut(nn.Module):
    """Identity shortcut that halves H, W and zero-pads the channels (no parameters)."""

    def __init__(self, planes):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = OptionAShortcut(planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet32(nn.Module):
    """CIFAR ResNet-32 (LDAM-DRW's resnet32): B x 3 x H x W -> B x num_class logits."""

    def __init__(self, num_class, blocks=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.feature_dim = 64
        self.head = nn.Linear(64, num_class)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def features(self, x):
        """B x 3 x H x W -> B x 64 pooled features."""
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """Three 3x3 conv layers (32, 64, 128 channels, BN, one 2x2 max-pool) for small digits."""

    def __init__(self, num_class):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU())
        self.feature_dim = 128
        self.head = nn.Linear(128, num_class)

    def features(self, x):
        """B x 3 x H x W -> B x 128 pooled features."""
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


class TorchvisionClassifier(nn.Module):
    """A torchvision classification network split into `backbone` (its fc replaced by the
    identity: B x feature_dim pooled features) and `head` (the fc it had)."""

    def __init__(self, net):
        super().__init__()
        self.head = net.fc
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net

    def features(self, x):
        return self.backbone(x)

    def forward(self, x):
        return self.head(self.features(x))


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM-DRW: B x in_features -> B x out_features cosines in [-1, 1],
    normalize(x) @ normalize(W, columns), W in_features x out_features (no bias). W starts
    uniform in [-1, 1] with unit-norm columns."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        w = torch.empty(in_features, out_features).uniform_(-1, 1)
        self.weight = nn.Parameter(F.normalize(w, dim=0))

    def forward(self, x):
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


def build_classifier(arch, num_class, cosine=False):
    """The `--cls_arch` model with `num_class` outputs, randomly initialised (CPU); with
    `cosine` its head is a NormedLinear (--cls_loss ldam_drw)."""
    if arch == 'resnet32':
        model = ResNet32(num_class)
    elif arch == 'cnn':
        model = SmallCNN(num_class)
    elif arch in TORCHVISION_ARCHS:
        import torchvision
        # weights=None: random init, so torchvision never tries to download anything
        model = TorchvisionClassifier(getattr(torchvision.models, arch)(weights=None,
                                                                      num_classes=num_class))
    else:
        raise UserError(f'--cls_arch {arch!r}: choose one of {", ".join(ARCHS)}')
    if cosine:
        model.head = NormedLinear(model.feature_dim, num_class)
    return model


def logit_scale(model):
    """The factor the training loss applies to the model's outputs: LDAM's s for a cosine
    head, else 1."""
    return LDAM_S if isinstance(model.head, NormedLinear) else 1.0


def num_parameters(model):
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def predict(model, loader, device):
    """Predictions of `model` over a loader of (x, y, ...) batches: (probs N x C float32,
    labels N int64) as CPU tensors; the model is put in eval mode. A cosine head's outputs are
    scaled by `logit_scale` first (the probabilities its loss trained)."""
    model.eval()
    scale = logit_scale(model)
    probs, labels = [], []
    for batch in loader:
        x, y = batch[0], batch[1]
        probs.append((scale * model(x.to(device)).float()).softmax(1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels).long()
