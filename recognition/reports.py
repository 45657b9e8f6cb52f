"""Scoring a classifier on the balanced test split: top-1 overall, for the many-shot
(> --many_shot training images), medium and few-shot (< --few_shot) classes and per class;
results.txt, per_class.csv, confusion.png, tensorboard and one eval.jsonl record."""
import os

import numpy as np

from recognition.data import evaluation_loader
from recognition.models import predict
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
    mode = 'ce' if synthetic is None else 'cas' if cfg.synthetic_only else 'ce+synthetic'
    rec = {'kind': 'classify', 'mode': mode, 'logdir': cfg.logdir, 'data_type': cfg.data_type,
           'imb_factor': cfg.imb_factor, 'imb_type': cfg.imb_type, 'arch': cfg.cls_arch,
           'epochs': epochs, 'batch_size': cfg.cls_batch_size, 'lr': cfg.cls_lr,
           'wd': cfg.cls_wd, 'momentum': cfg.cls_momentum, 'warmup': cfg.cls_warmup,
           'milestones': sorted(cfg.cls_milestones), 'gamma': cfg.cls_gamma, 'seed': cfg.seed,
           'img_size': cfg.img_size, 'many_shot': cfg.many_shot, 'few_shot': cfg.few_shot,
           'num_generated': int(gen_counts.sum())}
    if synthetic is not None:
        rec.update(synthetic=synthetic['path'], synthetic_weight=cfg.synthetic_weight,
                   synthetic_filter=cfg.synthetic_filter)
        if cfg.synthetic_filter:
            rec.update(filter_threshold=cfg.filter_threshold,
                       filtered_out=synthetic['dropped'].tolist())
    if synthetic is not None and cfg.synthetic_logdir:
        # the generator's evaluation keys, so collect_results.py can put its FID beside
        rec.update(generator=os.path.basename(os.path.normpath(cfg.synthetic_logdir)),
                   synthetic_logdir=cfg.synthetic_logdir, ckpt_step=cfg.ckpt_step,
                   sample_method=cfg.sample_method, omega=cfg.omega, sampler=cfg.sampler,
                   synthetic_fill=str(cfg.synthetic_fill))
    return rec


def evaluate_and_report(cfg, model, inputs, synthetic, gen_counts, device, writer, epochs):
    """Score on the test split; write results.txt, per_class.csv, confusion.png (up to 200
    classes), tensorboard test/*, one eval.jsonl record (last: it marks the run complete)."""
    out = cfg.logdir
    counts = inputs.real.class_counts
    correct, total, confusion = test_results(cfg, model, inputs, device)
    report = accuracy_report(correct, total, counts, cfg.many_shot, cfg.few_shot)
    groups = class_groups(counts, cfg.many_shot, cfg.few_shot)
    dropped = None if synthetic is None else synthetic['dropped']
    rec = run_record(cfg, synthetic, gen_counts, epochs)
    rec.update({k: v for k, v in report.items() if k != 'per_class'},
               test_images=int(total.sum()))

    def pct(v):
        return '-' if v is None else f'{100 * v:.2f}'
    text = (f'{rec["mode"]} {cfg.data_type} imb {cfg.imb_factor} {cfg.cls_arch} {epochs} epochs'
            f' ({int(gen_counts.sum())} generated images): top-1 {pct(report["top1"])}, many '
            f'{pct(report["top1_many"])} ({report["classes_many"]} classes), medium '
            f'{pct(report["top1_medium"])} ({report["classes_medium"]}), few '
            f'{pct(report["top1_few"])} ({report["classes_few"]})\n')
    print(text, end='')
    for key in ('top1',) + tuple(f'top1_{g}' for g in GROUPS):
        if report[key] is not None:
            writer.add_scalar(f'test/{key}', report[key], epochs)
    written = ['results.txt', 'per_class.csv']
    save_text(os.path.join(out, 'results.txt'), text)
    save_text(os.path.join(out, 'per_class.csv'),
              per_class_csv(counts, gen_counts, groups, total, report, dropped))
    if confusion is not None:
        save_confusion_png(confusion, os.path.join(out, 'confusion.png'), text.strip())
        written.append('confusion.png')
    append_jsonl(os.path.join(out, 'eval.jsonl'), rec)
    written.append('eval.jsonl')
    print(f'wrote {", ".join(written)}, tensorboard events and checkpoints to {out}')
    return rec
