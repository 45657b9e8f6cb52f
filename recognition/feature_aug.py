"""`--classify --feature_aug`: feature-level augmentation of a long-tailed classifier.

After the classifier of the run is trained (or with `--feature_classifier_logdir DIR`, a
finished `--classify` run taken as it is), this stage

1. encodes the real long-tailed training set (no augmentation, eval mode) with the classifier's
   penultimate layer, `features(x)` (recognition.models: every classifier is
   `head(features(x))`), and standardises the vectors per dimension;
2. trains a class-conditional diffusion model on them (recognition.feature_diffusion: an MLP
   denoiser under the project's GaussianDiffusionTrainer, so `--cb --tau` and `--cfg` apply
   unchanged) into LOGDIR/feature_diffusion;
3. draws features for every class up to the head's count (`--synthetic_fill`, as for generated
   images) with `--sample_method`, `--omega` and the sampler flags, saved as
   LOGDIR/feature_diffusion/features_{settings hash}.npz and reused when present;
4. trains a new last layer (zero-initialised, SGD, cosine decay, `--feat_head_epochs`,
   `--feat_head_lr`) on real + generated features (generated ones weighted by
   `--synthetic_weight`), in the standardised space, then folds the standardisation into it;
5. evaluates features + new head on the test split as `--classify` does: LOGDIR/feature_aug/
   results.txt, per_class.csv, confusion.png and an eval.jsonl record (mode 'feature_aug').

`--feat_source none` skips 2 and 3 and re-trains the last layer on the real features with
class-balanced sampling: classifier re-training (cRT, Kang et al. 2020), the control row.
LDMLR (Han et al. 2024) is this pipeline without the class-balancing regulariser.

Every input is checked by `prepare_feature_aug` before the run folder is touched; the stage
resumes (feature-model checkpoints, the saved features, a finished evaluation of the same
settings), and SIGINT/SIGTERM stop it after saving what can be saved.
"""
import copy
import hashlib
import json
import math
import os
import types

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from recognition.feature_diffusion import (FeatureStats, cosine_decay, feature_sampler_settings,
                                           resumable_checkpoint, sample_features,
                                           train_feature_model, training_settings)
from recognition.loop import newest_classifier_checkpoint
from recognition.losses import weighted_loss
from recognition.models import build_classifier
from recognition.reports import accuracy_report, score_line, test_results, write_report
from recognition.sources import fill_counts, flags_data_identity, parse_fill, weights_sha256
from runfolder import StopRequest, remove_stale_temporaries
from utils import UserError, save_npz

FEATURE_DIR = 'feature_diffusion'   # the feature model's run folder and the drawn features
RESULT_DIR = 'feature_aug'          # the re-trained classifier's results


# ---------------------------------------------------------------------------------------------
# checks (nothing written)

def check_feature_flags(cfg):
    """Flag combinations of the feature stage that cannot work."""
    if cfg.feature_classifier_logdir:
        if os.path.abspath(cfg.feature_classifier_logdir) == os.path.abspath(cfg.logdir):
            raise UserError('--feature_classifier_logdir is --logdir: drop it to add the '
                            'feature stage to the classifier of --logdir')
        for flag in ('synthetic', 'synthetic_logdir', 'synthetic_filter'):
            if getattr(cfg, flag):
                raise UserError(f'--{flag} trains the classifier, but --feature_classifier_logdir '
                                f'takes a trained one: run them separately')
    if cfg.feat_source == 'none':
        return
    parse_fill(cfg.synthetic_fill)
    if cfg.sample_method == 'uncond':
        raise UserError('--feature_aug draws features per class: --sample_method uncond gives '
                        'unlabelled ones; use cfg or cond')
    if cfg.sample_method == 'cfg' and cfg.omega > 0 and not (cfg.cfg or cfg.cb):
        raise UserError(f'--feature_aug: guidance (--omega {cfg.omega}) needs a feature model '
                        f'trained with label dropout: add --cfg (or --cb), or use --omega 0')
    feature_sampler_settings(cfg)  # the sampler flags resolve (else a UserError now)


def finished_classifier(folder, inputs):
    """(path, checkpoint) of the classifier of a finished --classify run in `folder`, checked
    against this run's training set; UserError naming --feature_classifier_logdir otherwise."""
    flag = f'--feature_classifier_logdir {folder}'
    found = newest_classifier_checkpoint(folder) if os.path.isdir(folder) else None
    if found is None:
        raise UserError(f'{flag}: no classifier checkpoint (ckpt_*.pt of main.py --classify) '
                        f'there')
    if not os.path.isfile(os.path.join(folder, 'eval.jsonl')):
        raise UserError(f'{flag}: the classifier has not finished training (no eval.jsonl); '
                        f'run its own command to the end first')
    path, ckpt = found
    if ckpt['num_class'] != inputs.num_class:
        raise UserError(f'{flag}: the classifier has {ckpt["num_class"]} classes, the '
                        f'training set {inputs.num_class}')
    counts = ckpt.get('class_counts')
    if counts is not None and not np.array_equal(counts, inputs.real.class_counts):
        raise UserError(f'{flag}: the classifier was trained on another training set (per-class '
                        f'counts {np.asarray(counts).tolist()}, here '
                        f'{inputs.real.class_counts.tolist()}); use its --data_type, '
                        f'--imb_factor and --imb_type')
    return path, ckpt


def prepare_feature_aug(cfg, inputs):
    """Check everything the feature stage will read before anything is written: the flags, the
    classifier of --feature_classifier_logdir, and a feature model already in
    LOGDIR/feature_diffusion (its feature dimension, classes and training settings must be
    this run's, and its classifier the one there is now). Returns the stage's namespace for
    run_feature_aug."""
    check_feature_flags(cfg)
    external = bool(cfg.feature_classifier_logdir)
    classifier_dir = cfg.feature_classifier_logdir if external else cfg.logdir
    classifier = finished_classifier(classifier_dir, inputs) if external else None
    arch = classifier[1]['arch'] if external else cfg.cls_arch
    dim = build_classifier(arch, inputs.num_class).feature_dim
    counts = inputs.real.class_counts
    stage = types.SimpleNamespace(external=external, classifier_dir=classifier_dir, dim=dim,
                                  found=None, per_class=np.zeros_like(counts))
    if cfg.feat_source == 'diffusion':
        stage.per_class = fill_counts(counts, cfg.synthetic_fill)
        if cfg.resume:
            if not external and os.path.isdir(classifier_dir):
                # the run's own classifier as it is now: the one the stage encodes with when the
                # run has finished (a feature model exists only then; --noresume resumes none)
                classifier = newest_classifier_checkpoint(classifier_dir)
            stage.found = resumable_checkpoint(
                os.path.join(cfg.logdir, FEATURE_DIR),
                training_settings(cfg, dim, inputs.num_class),
                None if classifier is None else weights_sha256(classifier[1]['model']))
    return stage


# ---------------------------------------------------------------------------------------------
# settings of a result (what makes it reusable)

def sampling_settings(cfg):
    """The sampling settings that matter for the drawn features, as plain values (the
    resolved sampler, see feature_diffusion.feature_sampler_settings)."""
    settings = feature_sampler_settings(cfg)
    out = {'sample_method': cfg.sample_method, 'sampler': settings.sampler,
           'omega': cfg.omega if cfg.sample_method == 'cfg' else 0.0}
    if settings.sampler == 'ddpm':
        out['var_type'] = cfg.var_type
    else:
        out.update(sample_steps=settings.sample_steps, spacing=settings.spacing)
    if settings.sampler == 'ddim':
        out['eta'] = settings.eta
    return out


def stage_settings(cfg, stage, num_class, classifier_ckpt):
    """Everything that defines the stage's result: {'features': ..., 'head': ...} of plain
    values (the feature part is None with --feat_source none): the classifier by its weights
    (whatever folder holds it), the training data by its flags (flags_data_identity) and counts."""
    classifier = {'classifier_sha256': weights_sha256(classifier_ckpt['model']),
                  'data': flags_data_identity(cfg),
                  'class_counts': np.asarray(classifier_ckpt.get('class_counts', [])).tolist()}
    features = None
    if cfg.feat_source == 'diffusion':
        features = dict(classifier, **training_settings(cfg, stage.dim, num_class),
                        **sampling_settings(cfg), per_class=stage.per_class.tolist())
    head = dict(classifier, source=cfg.feat_source, features=features,
                synthetic_weight=cfg.synthetic_weight, epochs=cfg.feat_head_epochs,
                lr=cfg.feat_head_lr, batch_size=cfg.cls_batch_size, momentum=cfg.cls_momentum,
                wd=cfg.cls_wd)
    return {'features': features, 'head': head}


def settings_hash(settings):
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def already_evaluated(out_dir, key):
    """Whether out_dir/eval.jsonl holds a record of these settings."""
    path = os.path.join(out_dir, 'eval.jsonl')
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line).get('settings_hash') == key:
                    return True
            except (ValueError, AttributeError):
                continue
    return False


# ---------------------------------------------------------------------------------------------
# features

def load_classifier(ckpt, device):
    """The classifier of a --classify checkpoint, in eval mode on `device`."""
    model = build_classifier(ckpt['arch'], ckpt['num_class'], cosine=ckpt.get('cosine', False))
    model.load_state_dict(ckpt['model'])
    return model.to(device).eval()


@torch.no_grad()
def encode(classifier, dataset, batch_size, num_workers, device):
    """Penultimate features of every item of `dataset` in order, eval mode: (float32 N x D,
    int64 N)."""
    classifier.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                        generator=torch.Generator())
    feats, labels = [], []
    for x, y in loader:
        feats.append(classifier.features(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats).numpy(), torch.cat(labels).long().numpy()


def load_features(path, dim, per_class):
    """Drawn features as drawn_features saved them: (float32 N x dim, int64 N), checked against
    the classifier's feature dimension and the per-class numbers asked for (UserError naming
    the file otherwise)."""
    try:
        with np.load(path) as f:
            feats, labels = f['features'], f['labels']
    except Exception as e:
        raise UserError(f'{path}: not a features file of --feature_aug ({type(e).__name__}); '
                        f'delete it') from None
    if feats.ndim != 2 or feats.shape[1] != dim or not np.isfinite(feats).all():
        raise UserError(f'{path}: features of shape {tuple(feats.shape)}, the classifier gives '
                        f'finite N x {dim}; delete it')
    ok = (labels.shape == (len(feats),) and np.issubdtype(labels.dtype, np.integer)
          and (labels.size == 0 or (labels.min() >= 0 and labels.max() < len(per_class))))
    if not ok or not np.array_equal(np.bincount(labels, minlength=len(per_class)), per_class):
        raise UserError(f'{path}: labels do not give the {len(per_class)} classes\' per-class '
                        f'numbers {np.asarray(per_class).tolist()}; delete it')
    return feats.astype(np.float32), labels.astype(np.int64)


def drawn_features(cfg, stage, z_real, y_real, stats, settings, folder, device, stop):
    """Standardised generated features and labels for the head: read from
    folder/features_{hash}.npz, or trained and drawn (and saved there). None when stopped."""
    if cfg.feat_source == 'none':
        return np.zeros((0, stage.dim), np.float32), np.zeros(0, np.int64)
    path = os.path.join(folder, f'features_{settings_hash(settings)}.npz')
    if cfg.resume and os.path.isfile(path):
        feats, labels = load_features(path, stage.dim, stage.per_class)
        print(f'reusing the drawn features {path}')
        return stats.standardise(feats), labels
    counts = np.bincount(y_real, minlength=len(stage.per_class))
    model, status = train_feature_model(cfg, z_real, y_real, counts, stats, folder, device, stop,
                                        stage.found, settings['classifier_sha256'])
    if status == 'stopped':
        return None
    print(f'drawing {int(stage.per_class.sum())} features ({cfg.sample_method}, omega '
          f'{cfg.omega}, {feature_sampler_settings(cfg).describe()}), per class '
          f'{stage.per_class.tolist()}')
    drawn = sample_features(cfg, model, stage.per_class, device, stop)
    if drawn is None:
        print(f'{stop.signal}: stopped while drawing features (the feature model is saved); run '
              f'the same command again to resume')
        return None
    z, labels = drawn
    if not np.isfinite(z).all():
        raise UserError(f'the feature model in {folder} drew non-finite features; remove the '
                        f'folder and train it again with a lower --feat_lr')
    save_npz(path, features=stats.restore(z), labels=labels,
             settings=np.array(json.dumps(settings, sort_keys=True)))
    return z, labels


# ---------------------------------------------------------------------------------------------
# the new last layer

def train_head(cfg, z, y, generated, num_class, device, stop):
    """A zero-initialised nn.Linear(D, num_class) trained on standardised features z (N x D)
    with labels y (N int64); `generated` (N bool) marks drawn features, weighted
    --synthetic_weight in the loss. SGD (--feat_head_lr, --cls_momentum, --cls_wd, batches of
    --cls_batch_size), the learning rate decayed to 0 on a cosine over --feat_head_epochs.
    Each epoch is a seeded permutation, or with --feat_source none N draws with class-balanced
    probabilities (cRT). Returns the layer, or None when `stop` received a signal."""
    n, dim = z.shape
    head = nn.Linear(dim, num_class).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optim = torch.optim.SGD(head.parameters(), lr=cfg.feat_head_lr, momentum=cfg.cls_momentum,
                            weight_decay=cfg.cls_wd)
    batch = min(cfg.cls_batch_size, n)
    per_epoch = math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, cosine_decay(cfg.feat_head_epochs *
                                                                  per_epoch))
    z_all = torch.from_numpy(np.ascontiguousarray(z)).to(device)
    y_all = torch.from_numpy(np.asarray(y, np.int64)).to(device)
    w_all = torch.where(torch.from_numpy(np.asarray(generated, bool)),
                        float(cfg.synthetic_weight), 1.0).to(device)
    balanced = cfg.feat_source == 'none'
    if balanced:
        counts = np.bincount(y, minlength=num_class)
        pick = torch.from_numpy(1.0 / counts[y]).double()
    for epoch in range(cfg.feat_head_epochs):
        if stop.signal:
            return None
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = (torch.multinomial(pick, n, replacement=True, generator=g) if balanced
                 else torch.randperm(n, generator=g))
        for i in range(0, n, batch):
            idx = order[i:i + batch].to(device)
            loss = weighted_loss(head(z_all[idx]), y_all[idx], w_all[idx])
            if not torch.isfinite(loss):
                raise UserError(f'--feature_aug head, epoch {epoch + 1}: the loss is '
                                f'{loss.item()}; lower --feat_head_lr')
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
    return head.eval()


def fold_head(head, stats):
    """The layer `head` (on standardised features) as one on raw features: W (f - m) / s + b =
    (W / s) f + (b - (W / s) m)."""
    mean = torch.as_tensor(stats.mean, device=head.weight.device)
    std = torch.as_tensor(stats.std, device=head.weight.device)
    out = nn.Linear(head.in_features, head.out_features).to(head.weight.device)
    with torch.no_grad():
        out.weight.copy_(head.weight / std)
        out.bias.copy_(head.bias - out.weight @ mean)
    return out.eval()


def with_head(classifier, head):
    """A copy of `classifier` whose last layer is `head`: head(features(x))."""
    model = copy.deepcopy(classifier)
    model.head = head
    return model.eval()


# ---------------------------------------------------------------------------------------------
# the stage

def run_feature_aug(cfg, inputs, stage, device):
    """The feature stage (see the module docstring) after prepare_feature_aug; the classifier
    of stage.classifier_dir is finished. Returns 'done', 'complete' or 'stopped'."""
    folder = os.path.join(cfg.logdir, FEATURE_DIR)
    out = os.path.join(cfg.logdir, RESULT_DIR)
    found = newest_classifier_checkpoint(stage.classifier_dir)
    if found is None:
        raise UserError(f'{stage.classifier_dir}: no classifier checkpoint to encode features '
                        f'with')
    classifier_path, classifier_ckpt = found
    settings = stage_settings(cfg, stage, inputs.num_class, classifier_ckpt)
    key = settings_hash(settings['head'])
    if cfg.resume and already_evaluated(out, key):
        print(f'{out}: feature augmentation with these settings already evaluated; nothing to do')
        return 'complete'
    for path in (folder, out):
        if os.path.isdir(path):
            remove_stale_temporaries(path)
    classifier = load_classifier(classifier_ckpt, device)
    real, labels = encode(classifier, inputs.real, cfg.cls_batch_size, cfg.num_workers, device)
    stats = FeatureStats.of(real)
    z_real = stats.standardise(real)
    print(f'--feature_aug: encoded {len(labels)} training images into {real.shape[1]}-d features '
          f'with {classifier_path}')
    with StopRequest() as stop:
        drawn = drawn_features(cfg, stage, z_real, labels, stats, settings['features'], folder,
                               device, stop)
        if drawn is None:
            return 'stopped'
        z_gen, y_gen = drawn
        generated = np.r_[np.zeros(len(labels), bool), np.ones(len(y_gen), bool)]
        head = train_head(cfg, np.concatenate([z_real, z_gen]), np.r_[labels, y_gen], generated,
                          inputs.num_class, device, stop)
        if head is None:
            print(f'{stop.signal}: stopped while training the last layer; run the same command '
                  f'again to resume')
            return 'stopped'
    gen_counts = np.bincount(y_gen, minlength=inputs.num_class).astype(np.int64)
    rec = stage_record(cfg, stage, settings, key, classifier_ckpt, gen_counts)
    base = accuracy_report(*test_results(cfg, classifier, inputs, device)[:2],
                           inputs.real.class_counts, cfg.many_shot, cfg.few_shot)
    rec.update({f'base_{k}': v for k, v in base.items() if k.startswith('top1')})
    source = 'cRT, real features' if cfg.feat_source == 'none' else (
        f'{"cb tau " + str(cfg.tau) if cfg.cb else "no cb"}, {cfg.sample_method} omega '
        f'{cfg.omega}, {rec["sampler"]}')
    headline = (f'feature_aug ({source}) {cfg.data_type} imb {cfg.imb_factor} {rec["arch"]} '
                f'({int(gen_counts.sum())} generated features)')
    rec['base_line'] = f'; the classifier before: {score_line(base, with_classes=False)}'
    write_report(cfg, out, with_head(classifier, fold_head(head, stats)), inputs, rec, headline,
                 gen_counts, device)
    return 'done'


def stage_record(cfg, stage, settings, key, classifier_ckpt, gen_counts):
    """The configuration part of the eval.jsonl record of the feature stage."""
    rec = {'kind': 'classify', 'mode': 'feature_aug', 'logdir': os.path.join(cfg.logdir,
                                                                             RESULT_DIR),
           'classifier_logdir': stage.classifier_dir, 'data_type': cfg.data_type,
           'imb_factor': cfg.imb_factor, 'imb_type': cfg.imb_type,
           'arch': classifier_ckpt['arch'], 'classifier_epochs': int(classifier_ckpt['epoch']),
           'feature_dim': stage.dim, 'seed': cfg.seed, 'img_size': cfg.img_size,
           'many_shot': cfg.many_shot, 'few_shot': cfg.few_shot, 'feat_source': cfg.feat_source,
           'num_generated': int(gen_counts.sum()), 'synthetic_weight': cfg.synthetic_weight,
           'head_epochs': cfg.feat_head_epochs, 'head_lr': cfg.feat_head_lr,
           'head_batch_size': cfg.cls_batch_size, 'settings_hash': key}
    features = settings['features']
    if features is not None:
        rec.update({k: features[k] for k in ('cb', 'tau', 'cfg', 'T', 'beta_1', 'beta_T')},
                   feat_steps=features['steps'], feat_width=features['width'],
                   feat_blocks=features['blocks'], feat_lr=features['lr'],
                   feat_batch_size=features['batch_size'], feat_ema_decay=features['ema_decay'],
                   synthetic_fill=str(cfg.synthetic_fill), **sampling_settings(cfg),
                   features=os.path.join(cfg.logdir, FEATURE_DIR,
                                         f'features_{settings_hash(features)}.npz'))
    return rec
