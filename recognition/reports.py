"""Scoring a classifier on the balanced test split: top-1 overall, for the many-shot
(> --many_shot training images), medium and few-shot (< --few_shot) classes and per class;
results.txt, per_class.csv, confusion.png, tensorboard and one eval.jsonl record."""
import os

import numpy as np

from recognition.data import evaluation_loader
from recognition.losses import training_settings
from recognition.models import predict
from recognition.sources import recorded_settings
from utils import append_jsonl, atomic_write, save_text


GROUPS = ('many', 'medium', 'few')


CONFUSION_PNG_MAX_CLASSES = 200  # a larger matrix is unreadable (and 8142^2 cells for iNat)


def class_groups(counts, many_shot, few_shot):
    """'many' (> many_shot training images), 'few' (< few_shot) or 'medium' per class."""
    return ['many' if n > many_shot else 'few' if n < few_shot else 'medium' for n in counts]


def accuracy_report(correct, total, counts, many_shot, few_shot):
    """Top-1 from per-class test results.

    correct, total: per-class numbers of correctly classified / all test images (length C);
    counts: per-class training images (they define the groups). Returns {'top1', 'top1_many',
    'top1_medium', 'top1_few' (fractions in [0, 1], None for a group without classes or test
    images), 'classes_many', ... (class counts per group), 'per_class' (C fractions, None for a
    class without test images)}.
    """
    correct, total = np.asarray(correct, np.int64), np.asarray(total, np.int64)
    groups = np.asarray(class_groups(counts, many_shot, few_shot))

    def frac(mask):
        n = int(total[mask].sum())
        return float(correct[mask].sum()) / n if n > 0 else None

    out = {'top1': frac(np.ones(len(total), bool))}
    for g in GROUPS:
        out[f'top1_{g}'] = frac(groups == g)
        out[f'classes_{g}'] = int((groups == g).sum())
    out['per_class'] = [float(c) / t if t > 0 else None for c, t in zip(correct, total)]
    return out


def test_results(cfg, model, inputs, device):
    """Per-class (correct, total) on the test split (np.int64, length C) and the confusion
    matrix (C x C np.int64, rows = true class; None above CONFUSION_PNG_MAX_CLASSES classes)."""
    loader = evaluation_loader(inputs.test, cfg.cls_batch_size, cfg.num_workers)
    probs, labels = predict(model, loader, device)
    pred = probs.argmax(1).numpy()
    labels = labels.numpy()
    c = inputs.num_class
    total = np.bincount(labels, minlength=c).astype(np.int64)
    correct = np.bincount(labels[pred == labels], minlength=c).astype(np.int64)
    confusion = None
    if c <= CONFUSION_PNG_MAX_CLASSES:
        confusion = np.bincount(labels * c + pred, minlength=c * c).reshape(c, c).astype(np.int64)
    return correct, total, confusion


def save_confusion_png(confusion, path, title):
    """Row-normalised confusion matrix (rows: true class) as a PNG, written atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = min(4 + 0.25 * len(rows), 20)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(rows, cmap='Blues', vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    ax.set_title(title, fontsize=9)
    with atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=100, bbox_inches='tight')
    plt.close(fig)


def per_class_csv(counts, gen_counts, groups, total, report, dropped):
    lines = ['class,train_count,generated_count,filtered_out,group,test_count,accuracy']
    for c, acc in enumerate(report['per_class']):
        lines.append(f'{c},{counts[c]},{gen_counts[c]},'
                     f'{"" if dropped is None else dropped[c]},{groups[c]},{total[c]},'
                     f'{"" if acc is None else f"{acc:.6f}"}')
    return '\n'.join(lines) + '\n'


def run_record(cfg, synthetic, gen_counts, epochs):
    """The configuration part of the eval.jsonl record."""
    # the training recipe in one word: the loss (+resample), +synthetic, or cas
    loss = cfg.cls_loss + ('+resample' if cfg.cls_resample else '')
    mode = loss if synthetic is None else 'cas' if cfg.synthetic_only else loss + '+synthetic'
    rec = {'kind': 'classify', 'mode': mode, 'logdir': cfg.logdir, 'data_type': cfg.data_type,
           'imb_factor': cfg.imb_factor, 'imb_type': cfg.imb_type, 'arch': cfg.cls_arch,
           'epochs': epochs, 'batch_size': cfg.cls_batch_size, 'lr': cfg.cls_lr,
           'wd': cfg.cls_wd, 'momentum': cfg.cls_momentum, 'warmup': cfg.cls_warmup,
           'milestones': sorted(cfg.cls_milestones), 'gamma': cfg.cls_gamma, 'seed': cfg.seed,
           'img_size': cfg.img_size, 'many_shot': cfg.many_shot, 'few_shot': cfg.few_shot,
           'num_generated': int(gen_counts.sum())}
    # the loss and its parameters (None where the loss has none), the images its class counts
    # come from (None for ce, which uses none) and the class-balanced re-sampling
    rec.update(training_settings(cfg, int(gen_counts.sum()) > 0))
    if cfg.data_type == 'imagefolder':
        rec.update(root=cfg.root, test_root=cfg.test_root)
    if synthetic is not None:
        rec.update(synthetic=synthetic['path'], synthetic_weight=cfg.synthetic_weight,
                   synthetic_filter=cfg.synthetic_filter)
        # how the set was drawn (sampler, steps, spacing, eta, clipping, network evaluations;
        # for translations the strength, time index and source classes)
        recorded = recorded_settings(synthetic['path'])
        rec.update({k if k.startswith(('synthetic_', 'translate_')) else f'synthetic_{k}': v
                    for k, v in recorded.items()})
        if cfg.synthetic_filter:
            rec.update(filter_threshold=cfg.filter_threshold,
                       filtered_out=synthetic['dropped'].tolist())
    if synthetic is not None and cfg.synthetic_logdir:
        # the generator's evaluation keys, so collect_results.py can put its FID beside: what
        # the set was drawn with (recognition.sources.generator_cfg resolves them)
        rec.update(generator=os.path.basename(os.path.normpath(cfg.synthetic_logdir)),
                   synthetic_logdir=cfg.synthetic_logdir,
                   **{k: recorded[k] for k in ('ckpt_step', 'sample_method', 'omega')},
                   sampler=rec.get('synthetic_sampler'), synthetic_fill=str(cfg.synthetic_fill))
    return rec


def score_line(report, with_classes=True):
    """'top-1 91.20, many 99.00 (2 classes), medium 90.17 (6), few 81.50 (2)' (percentages;
    '-' for a group without classes)."""
    def pct(v):
        return '-' if v is None else f'{100 * v:.2f}'
    groups = [f'{g} {pct(report[f"top1_{g}"])}' + (
        f' ({report[f"classes_{g}"]}{" classes" if g == "many" else ""})' if with_classes else '')
        for g in GROUPS]
    return f'top-1 {pct(report["top1"])}, ' + ', '.join(groups)


def write_report(cfg, out, model, inputs, rec, headline, gen_counts, device, dropped=None,
                 writer=None, step=None):
    """Score `model` on the test split and write into `out`: results.txt ('HEADLINE: top-1 ...'
    plus whatever rec['base_line'] adds), per_class.csv, confusion.png (up to 200 classes),
    tensorboard test/* (with `writer`, at `step`) and `rec` with the scores as one eval.jsonl
    record (last: it marks the run complete). Returns the record."""
    os.makedirs(out, exist_ok=True)
    counts = inputs.real.class_counts
    correct, total, confusion = test_results(cfg, model, inputs, device)
    report = accuracy_report(correct, total, counts, cfg.many_shot, cfg.few_shot)
    groups = class_groups(counts, cfg.many_shot, cfg.few_shot)
    rec.update({k: v for k, v in report.items() if k != 'per_class'},
               test_images=int(total.sum()))
    text = f'{headline}: {score_line(report)}{rec.pop("base_line", "")}\n'
    print(text, end='')
    if writer is not None:
        for key in ('top1',) + tuple(f'top1_{g}' for g in GROUPS):
            if report[key] is not None:
                writer.add_scalar(f'test/{key}', report[key], step)
    written = ['results.txt', 'per_class.csv']
    save_text(os.path.join(out, 'results.txt'), text)
    save_text(os.path.join(out, 'per_class.csv'),
              per_class_csv(counts, gen_counts, groups, total, report, dropped))
    if confusion is not None:
        save_confusion_png(confusion, os.path.join(out, 'confusion.png'), text.strip())
        written.append('confusion.png')
    append_jsonl(os.path.join(out, 'eval.jsonl'), rec)
    written.append('eval.jsonl')
    print(f'wrote {", ".join(written)} to {out}')
    return rec


def evaluate_and_report(cfg, model, inputs, synthetic, gen_counts, device, writer, epochs):
    """The classifier's report (write_report) into --logdir, with run_record's configuration."""
    rec = run_record(cfg, synthetic, gen_counts, epochs)
    headline = (f'{rec["mode"]} {cfg.data_type} imb {cfg.imb_factor} {cfg.cls_arch} {epochs} '
                f'epochs ({int(gen_counts.sum())} generated images)')
    dropped = None if synthetic is None else synthetic['dropped']
    return write_report(cfg, cfg.logdir, model, inputs, rec, headline, gen_counts, device,
                        dropped, writer, epochs)
