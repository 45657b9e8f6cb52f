#!/usr/bin/env python
"""Collect the evaluations of all runs into one table (markdown, or CSV with --csv).

    python scripts/collect_results.py [LOG_ROOT] [--csv]

Reads every LOG_ROOT/*/eval.jsonl (one JSON object per evaluation, written by
`main.py --eval`, and by `main.py --classify` for classifier runs) and LOG_ROOT/*/feature_aug/
eval.jsonl (`--classify --feature_aug`, shown as run RUN/feature_aug); for each run, checkpoint,
sample method and omega the last line wins. Missing values are shown as '-' (empty cells in
CSV). Pure python: json and argparse only.

When classifier runs are present, the table gains the columns classifier (the recipe: the
loss, +resample, +synthetic, or cas), loss (--cls_loss with its parameters, e.g.
`ldam_drw (drw 160)`, `logit_adjust (tau 1.0)`, and the class counts it uses when they are not
the real training set's), top1, top1_many, top1_medium and top1_few right after FID; a
classifier trained on images of a generator run (--synthetic_logdir) shows that generator's FID
when LOG_ROOT holds its evaluation with the same checkpoint, sample method and omega.
"""
import argparse
import csv
import glob
import json
import math
import os
import sys

# (header, key in eval.jsonl, format of the markdown table)
COLUMNS = [
    ('run', 'run', None),
    ('ckpt', 'ckpt_step', None),
    ('method', 'sample_method', None),
    ('omega', 'omega', None),
    ('images', 'num_images', None),
    ('FID', 'FID', '.2f'),
    ('IS', 'IS', '.2f'),
    ('precision', 'precision', '.3f'),
    ('recall', 'recall', '.3f'),
    ('F_8', 'F8', '.3f'),
    ('F_1/8', 'F1/8', '.3f'),
    ('FID_head', 'FID_head', '.2f'),
    ('FID_medium', 'FID_medium', '.2f'),
    ('FID_tail', 'FID_tail', '.2f'),
    ('recall_head', 'recall_head', '.3f'),
    ('recall_medium', 'recall_medium', '.3f'),
    ('recall_tail', 'recall_tail', '.3f'),
]
# the long-tailed recognition columns, added when a classifier run is present
ACC_COLUMNS = [
    ('classifier', 'mode', None),
    ('loss', 'loss', None),
    ('top1', 'top1', '.3f'),
    ('top1_many', 'top1_many', '.3f'),
    ('top1_medium', 'top1_medium', '.3f'),
    ('top1_few', 'top1_few', '.3f'),
]
MISSING = '-'


def is_classifier(rec):
    return rec.get('kind') == 'classify'


def columns_of(records):
    """COLUMNS, with ACC_COLUMNS right after FID when any record is a classifier run's."""
    if not any(is_classifier(r) for r in records):
        return COLUMNS
    at = [h for h, _, _ in COLUMNS].index('FID') + 1
    return COLUMNS[:at] + ACC_COLUMNS + COLUMNS[at:]


def loss_label(rec):
    """--cls_loss of a classifier record with its parameters, e.g. 'ce_drw (drw 160)',
    'logit_adjust (tau 1.0, counts real+generated)'; records older than --cls_loss are 'ce'."""
    params = []
    if rec.get('drw_epoch') is not None:
        params.append(f'drw {rec["drw_epoch"]}')
    if rec.get('la_tau') is not None:
        params.append(f'tau {rec["la_tau"]}')
    if rec.get('loss_counts') not in (None, 'real'):
        params.append(f'counts {rec["loss_counts"]}')
    name = rec.get('cls_loss') or 'ce'
    return f'{name} ({", ".join(params)})' if params else name


def attach_loss_labels(records):
    """Give each classifier record its 'loss' label (see loss_label)."""
    for rec in records:
        if is_classifier(rec):
            rec['loss'] = loss_label(rec)
    return records


def attach_generator_fid(records):
    """Give each classifier record trained on a generator run's images (key 'generator') that
    run's FID, from its evaluation with the same ckpt_step, sample_method and omega."""
    evals = {(r['run'], r.get('ckpt_step'), r.get('sample_method'), _omega_key(r.get('omega'))): r
             for r in records if not is_classifier(r)}
    for rec in records:
        if is_classifier(rec) and rec.get('generator') and rec.get('FID') is None:
            found = evals.get((rec['generator'], rec.get('ckpt_step'), rec.get('sample_method'),
                               _omega_key(rec.get('omega'))))
            if found is not None:
                rec['FID'] = found.get('FID')
    return records


def read_jsonl(path):
    """The JSON objects of `path`, skipping (with a warning) lines that are not objects."""
    records = []
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                print(f'warning: {path}:{lineno}: not JSON, skipped', file=sys.stderr)
                continue
            if not isinstance(rec, dict):
                print(f'warning: {path}:{lineno}: not a JSON object, skipped', file=sys.stderr)
                continue
            records.append(rec)
    return records


def _omega_key(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def collect(log_root):
    """[record] of the last evaluation per (run, ckpt_step, sample_method, omega), sorted;
    each record gets 'run' = the name of its run folder."""
    latest = {}
    root = glob.escape(log_root)
    paths = (glob.glob(os.path.join(root, '*', 'eval.jsonl'))
             + glob.glob(os.path.join(root, '*', 'feature_aug', 'eval.jsonl')))
    for path in sorted(paths):
        run = os.path.relpath(os.path.dirname(path), log_root)
        for rec in read_jsonl(path):
            rec = dict(rec, run=run)
            key = (run, rec.get('ckpt_step'), rec.get('sample_method'),
                   _omega_key(rec.get('omega')))
            latest.pop(key, None)  # re-insert: the last line wins
            latest[key] = rec

    def order(item):
        run, ckpt, method, omega = item[0]
        return (run, ckpt if isinstance(ckpt, (int, float)) else -1, str(method),
                omega if isinstance(omega, float) else -1.0)
    return [rec for _, rec in sorted(latest.items(), key=order)]


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def cell(value, spec):
    """Markdown cell text of a value."""
    if value is None or value == '' or isinstance(value, (list, dict)):
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if spec and _is_number(value):
        return format(value, spec)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


def markdown(records):
    cols = columns_of(records)
    header = [h for h, _, _ in cols]
    rows = [[cell(rec.get(key), spec) for _, key, spec in cols] for rec in records]
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join('---' if i < 3 else '---:' for i in range(len(header))) + '|']
    lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
    return '\n'.join(lines)


def write_csv(records, out):
    cols = columns_of(records)
    w = csv.writer(out, lineterminator='\n')
    w.writerow([h for h, _, _ in cols])
    for rec in records:
        row = []
        for _, key, _ in cols:
            v = rec.get(key)
            row.append('' if v is None or isinstance(v, (list, dict)) else v)
        w.writerow(row)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('log_root', nargs='?', default=os.environ.get('LOG_ROOT', './logs'),
                        help='folder of the run folders (default: $LOG_ROOT or ./logs)')
    parser.add_argument('--csv', action='store_true', help='print CSV instead of markdown')
    args = parser.parse_args(argv)
    if not os.path.isdir(args.log_root):
        print(f'error: {args.log_root}: no such folder', file=sys.stderr)
        return 1
    records = attach_loss_labels(attach_generator_fid(collect(args.log_root)))
    if not records:
        print(f'error: no evaluations found ({args.log_root}/*/eval.jsonl)', file=sys.stderr)
        return 1
    if args.csv:
        write_csv(records, sys.stdout)
    else:
        print(markdown(records))
    return 0


if __name__ == '__main__':
    sys.exit(main())
