"""`main.py --classify`: check every input, then train and evaluate a long-tailed classifier.

`classify(cfg, flags_text)` trains a classifier (recognition.models) on the long-tailed
training set that the diffusion run of the same flags uses (dataset.build_dataset), optionally
with extra images (recognition.sources), or on generated images alone (`--synthetic_only`: the
Classification Accuracy Score, CAS), and scores it on the balanced held-out test split
(dataset.build_test_dataset); see recognition.reports. `cfg` is the plain namespace of main.py's
flags; nothing here reads absl FLAGS.

Protocol (LDAM-DRW's CIFAR setting, the defaults): SGD momentum 0.9, lr 0.1, weight decay 2e-4,
batch 128, 200 epochs, linear warm-up over 5 epochs, lr x0.01 at epoch 160 and x0.0001 at 180,
random crop (zero padding img_size / 8, i.e. 4 at 32) and horizontal flip.

The run folder (`--logdir`) has the guarantees of diffusion training: it resumes exactly from
its newest checkpoint (the batch order is a pure function of (seed, epoch); crops, flips and
every RNG state are saved), files are written atomically, SIGINT/SIGTERM save and exit 0, and
nothing is written before every input has been checked."""
import copy
import os
import types

import numpy as np
import torch

import dataset as D
from recognition.data import evaluation_loader, synthetic_dataset
from recognition.feature_aug import FEATURE_DIR, RESULT_DIR, prepare_feature_aug, run_feature_aug
from recognition.loop import check_training_data, classifier_from_run, run_training
from recognition.losses import LongTailLoss
from recognition.models import predict
from recognition import translate
from recognition.sources import (drawn_synthetic, fill_counts, generator_cfg, parse_fill,
                                 weights_sha256)
from runfolder import remove_stale_temporaries, write_data_record
from utils import UserError, check_writable_dir, get_device, save_text


def check_sources(cfg):
    """Combinations of the generated-image flags that cannot work."""
    if cfg.synthetic and cfg.synthetic_logdir:
        raise UserError('pass either --synthetic PATH (a saved set) or --synthetic_logdir (draw '
                        'from a trained run), not both')
    has_source = bool(cfg.synthetic or cfg.synthetic_logdir)
    for flag in ('synthetic_only', 'synthetic_filter'):
        if getattr(cfg, flag) and not has_source:
            raise UserError(f'--{flag} needs generated images: --synthetic PATH or '
                            f'--synthetic_logdir LOGDIR')
    if cfg.synthetic_logdir and cfg.sample_method == 'uncond':
        raise UserError('--synthetic_logdir: --sample_method uncond gives unlabelled images; '
                        'use cfg or cond')
    if cfg.synthetic_logdir:
        parse_fill(cfg.synthetic_fill)
    if cfg.synthetic_source == 'translate' and not cfg.synthetic_logdir:
        raise UserError('--synthetic_source translate translates real images with a class-'
                        'conditional diffusion run: give --synthetic_logdir LOGDIR')


def load_inputs(cfg, device):
    """Training set, test split, generated set or generator, filter classifier: a namespace.
    Raises UserError naming the flag or file of the first defect; writes nothing."""
    real = D.build_dataset(cfg.data_type, cfg.root, cfg.img_size, cfg.imb_factor, cfg.imb_type,
                           train=True, download=cfg.download, hflip=False,
                           list_file=cfg.list_file)
    test = D.build_test_dataset(cfg.data_type, cfg.root, cfg.img_size, cfg.cls_test_list,
                                cfg.download, test_root=cfg.test_root)
    num_class = real.num_class
    if single := D.one_class_note(real, cfg.data_type, cfg.root):
        raise UserError(f'{single}; a classifier needs at least two classes')
    if test.num_class > num_class:
        raise UserError(f'test split of {cfg.data_type}: labels up to {test.num_class - 1}, but '
                        f'the training set has {num_class} classes')
    test.num_class = num_class
    if not (cfg.synthetic_only or cfg.cls_counts_with_synthetic):
        # the loss's class counts are the real ones: a class without images fails here, before
        # anything is written, not after the generated images are drawn
        LongTailLoss(cfg.cls_loss, real.class_counts, cfg.cls_drw_epoch, cfg.cls_la_tau)
    inputs = types.SimpleNamespace(real=real, test=test, num_class=num_class, synthetic=None,
                                   generator=None, per_class=None, filter_model=None)
    if cfg.synthetic:
        inputs.synthetic = D.load_synthetic(cfg.synthetic, num_class, cfg.img_size)
        if cfg.synthetic_only and len(inputs.synthetic[1]) < 2:
            raise UserError(f'--synthetic {cfg.synthetic}: {len(inputs.synthetic[1])} image; '
                            f'--synthetic_only needs at least 2')
    if cfg.synthetic_logdir:
        from evaluation import load_ema_model
        gen = generator_cfg(cfg)
        model, gen_classes, ckpt = load_ema_model(gen, device)
        gen.weights_sha256 = weights_sha256(ckpt['ema_model'])
        if gen_classes != num_class:
            raise UserError(f'--synthetic_logdir {cfg.synthetic_logdir}: the model has '
                            f'{gen_classes} classes, {cfg.data_type} has {num_class}')
        inputs.generator = (gen, model)
        inputs.per_class = fill_counts(real.class_counts, cfg.synthetic_fill, cfg.synthetic_only)
        if cfg.synthetic_source == 'translate':
            translate.start_index(cfg.translate_strength, gen.T)  # below one step: refused
            inputs.translate_classes = translate.source_classes(
                cfg.translate_from, real.class_counts, cfg.many_shot, cfg.few_shot)
            if not inputs.translate_classes:
                raise UserError(f'--translate_from {cfg.translate_from}: no class is in that '
                                f'set (--many_shot {cfg.many_shot}, --few_shot {cfg.few_shot}); '
                                f'choose other groups or class indices')
            inputs.translate_sources = translate.choose_sources(
                real.targets, inputs.per_class, inputs.translate_classes, cfg.seed)
    if cfg.synthetic_filter and cfg.filter_logdir:
        inputs.filter_model, filter_classes = classifier_from_run(cfg.filter_logdir, device)
        if filter_classes != num_class:
            raise UserError(f'--filter_logdir {cfg.filter_logdir}: the classifier has '
                            f'{filter_classes} classes, {cfg.data_type} has {num_class}')
    return inputs


def filter_synthetic(cfg, inputs, images, labels, out_dir, device):
    """Keep the generated images that a classifier trained on the real long-tailed data assigns
    to their own class with probability >= --filter_threshold. The classifier comes from
    --filter_logdir, else it is trained first into LOGDIR/filter_real. Returns (images, labels,
    dropped per class np.int64)."""
    model = inputs.filter_model
    if model is None:
        sub = copy.copy(cfg)
        sub.logdir = os.path.join(out_dir, 'filter_real')
        sub.synthetic = sub.synthetic_logdir = ''
        sub.synthetic_only = sub.synthetic_filter = False
        print(f'--synthetic_filter: training the real-data classifier into {sub.logdir}')
        real_only = copy.copy(inputs)
        real_only.synthetic = real_only.generator = None
        if run_training(sub, real_only, None, device) == 'stopped':
            return None
        model, _ = classifier_from_run(sub.logdir, device)
    data = synthetic_dataset(images, labels, inputs.num_class, cfg.img_size)
    probs, _ = predict(model, evaluation_loader(data, cfg.cls_batch_size), device)
    own = probs[torch.arange(len(labels)), torch.from_numpy(labels)].numpy()
    keep = own >= cfg.filter_threshold
    dropped = np.bincount(labels[~keep], minlength=inputs.num_class).astype(np.int64)
    print(f'--synthetic_filter (threshold {cfg.filter_threshold}): dropped {int(dropped.sum())} '
          f'of {len(labels)} generated images; per class {dropped.tolist()}')
    return images[keep], labels[keep], dropped


def output_folders(cfg):
    """The folders this run writes: LOGDIR and the subfolders its flags call for."""
    subs = ['synthetic'] if cfg.synthetic_logdir else []
    subs += ['filter_real'] if cfg.synthetic_filter and not cfg.filter_logdir else []
    subs += [FEATURE_DIR, RESULT_DIR] if cfg.feature_aug else []
    return [cfg.logdir] + [os.path.join(cfg.logdir, sub) for sub in subs]


def classify(cfg, flags_text):
    """--classify: check the inputs, then train and evaluate into --logdir (see the module
    docstring). Returns 'done', 'complete' (nothing to do) or 'stopped' (signal; resumable)."""
    check_sources(cfg)
    for folder in output_folders(cfg):  # before any work: a failed write would waste it
        check_writable_dir(folder, 'logdir')
    device = get_device()
    torch.manual_seed(cfg.seed)
    inputs = load_inputs(cfg, device)
    # --feature_aug: the feature stage's inputs are checked now too, before anything is written
    feature_stage = prepare_feature_aug(cfg, inputs) if cfg.feature_aug else None
    data = check_training_data(cfg, inputs.real)  # a resume on other data: refused now
    # every input has been checked: only now touch the run folder
    os.makedirs(cfg.logdir, exist_ok=True)
    remove_stale_temporaries(cfg.logdir)
    write_data_record(cfg.logdir, data)
    save_text(os.path.join(cfg.logdir, 'flagfile.txt'), flags_text)
    counts = inputs.real.class_counts
    print(f'{cfg.data_type}: {len(inputs.real)} training images, {inputs.num_class} classes, '
          f'per-class counts {counts.max()}..{counts.min()}; test split {len(inputs.test)} images')
    if feature_stage is not None and feature_stage.external:  # a trained classifier: no training
        return run_feature_aug(cfg, inputs, feature_stage, device)
    source, dropped = None, None
    if inputs.synthetic is not None:
        images, labels = inputs.synthetic
        source = cfg.synthetic
    elif inputs.generator is not None:
        drawn = drawn_synthetic(cfg, inputs, cfg.logdir, device)
        if drawn is None:  # SIGINT / SIGTERM while drawing
            return 'stopped'
        images, labels, source = drawn
    if source is not None and cfg.synthetic_filter:
        filtered = filter_synthetic(cfg, inputs, images, labels, cfg.logdir, device)
        if filtered is None:
            return 'stopped'
        images, labels, dropped = filtered
    synthetic = None
    if source is not None:
        synthetic = dict(images=images, labels=labels, path=source, dropped=dropped)
    status = run_training(cfg, inputs, synthetic, device)
    if feature_stage is None or status == 'stopped':
        return status
    return run_feature_aug(cfg, inputs, feature_stage, device)
