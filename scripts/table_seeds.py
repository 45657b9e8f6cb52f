#!/usr/bin/env python
"""One markdown row per group of runs that differ only in their seed: mean ± std of each metric.

    python scripts/table_seeds.py LOG_ROOT [--runs GLOB] [--metrics top1 top1_few ...]
        [--order GROUP ...] [--label GROUP=TEXT ...] [--scale 100] [--digits 1] [--out FILE]

Reads LOG_ROOT/*/eval.jsonl as scripts/collect_results.py does (the last record per run,
checkpoint, method and omega wins) and keeps the run folders whose names match --runs (a glob,
default '*'). A run's group is its folder name without the seed suffix (--seed_suffix, a
regular expression, default `_s[0-9]+$`: mnistlt_cls_ce_s2 -> mnistlt_cls_ce), or, with
--group_by KEY..., the values of those eval.jsonl keys. Each cell is the mean over the group's
runs and, with two or more, the sample standard deviation (n - 1) after ±, of the metric times
--scale (100: percent); a run without the metric (an empty group: None) is left out of that
cell, a cell without values is '-'. Rows follow --order (groups not named there come after, in
sorted order); --label renames a group in the first column. --per REGEX (one capture group,
searched in each run name: `_(d[0-9]+)_s` for the diffusion seed) adds a last column with the
means of --per_metrics for each captured value, so that a row pooled over two diffusion models
also shows each model's share of the spread ("d0: 93.6 / 88.7; d1: 92.9 / 87.1"). Pure
python (json, argparse, re, statistics); --out writes the table atomically (temporary file,
then rename).
"""
import argparse
import fnmatch
import math
import os
import re
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from collect_results import attach_loss_labels, collect  # noqa: E402

HEADERS = {'top1': 'top-1', 'top1_many': 'many', 'top1_medium': 'medium', 'top1_few': 'few'}


def group_of(rec, group_by, seed_suffix):
    """The group name of a record: the run name without its seed suffix, or the values of the
    `group_by` keys joined by ', '."""
    if not group_by:
        return re.sub(seed_suffix, '', rec['run'])
    return ', '.join(f'{rec.get(k)}' for k in group_by)


def mean_std(values):
    """(mean, sample std or None for fewer than two values) of finite numbers; None if none."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)]
    if not vals:
        return None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None


def cell(stats, scale, digits):
    if stats is None:
        return '-'
    mean, std = stats
    text = f'{mean * scale:.{digits}f}'
    return text if std is None else f'{text} ± {std * scale:.{digits}f}'


def per_cell(runs, per, per_metrics, scale, digits):
    """'v1: m / m; v2: m / m': the mean of each of per_metrics over the runs whose name has
    `per`'s capture v (in sorted order of v); '-' when no run name matches."""
    parts = {}
    for rec in runs:
        found = re.search(per, rec['run'])
        if found:
            parts.setdefault(found.group(1), []).append(rec)
    texts = []
    for value in sorted(parts):
        means = [mean_std([r.get(m) for r in parts[value]]) for m in per_metrics]
        texts.append(f'{value}: ' + ' / '.join(
            '-' if s is None else f'{s[0] * scale:.{digits}f}' for s in means))
    return '; '.join(texts) or '-'


def table(records, metrics, group_by=(), seed_suffix=r'_s[0-9]+$', order=(), labels=None,
          scale=100.0, digits=1, first='runs', per=None, per_metrics=(), per_header=None):
    """The markdown table (a string) of `records` (dicts with 'run' and the metrics); with
    `per` a last column of per_cell()s headed per_header."""
    groups = {}
    for rec in records:
        groups.setdefault(group_of(rec, group_by, seed_suffix), []).append(rec)
    names = [g for g in order if g in groups] + sorted(g for g in groups if g not in order)
    labels = labels or {}
    head = [first, 'seeds'] + [HEADERS.get(m, m) for m in metrics]
    if per:
        per_metrics = per_metrics or [metrics[0], metrics[-1]]
        head.append(per_header or f'{" / ".join(HEADERS.get(m, m) for m in per_metrics)} by '
                                  f'{per}')
    lines = ['| ' + ' | '.join(head) + ' |',
             '|---|---:|' + '---:|' * len(metrics) + ('---|' if per else '')]
    for name in names:
        runs = groups[name]
        cells = [cell(mean_std([r.get(m) for r in runs]), scale, digits) for m in metrics]
        if per:
            cells.append(per_cell(runs, per, per_metrics, scale, digits))
        lines.append('| ' + ' | '.join([labels.get(name, name), str(len(runs))] + cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_atomic(path, text):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def parse_labels(items):
    labels = {}
    for item in items:
        name, sep, text = item.partition('=')
        if not sep or not name:
            raise ValueError(f'--label {item!r}: expected GROUP=TEXT')
        labels[name] = text
    return labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('log_root', help='folder of the run folders')
    parser.add_argument('--runs', default='*', help='glob of the run folder names to use')
    parser.add_argument('--metrics', nargs='+', default=list(HEADERS),
                        help='eval.jsonl keys, one column each (default: top-1 and the groups)')
    parser.add_argument('--group_by', nargs='+', default=[],
                        help='group by these eval.jsonl keys instead of the run name')
    parser.add_argument('--seed_suffix', default=r'_s[0-9]+$',
                        help='regular expression removed from a run name to give its group')
    parser.add_argument('--order', nargs='+', default=[], help='groups in this row order')
    parser.add_argument('--label', action='append', default=[], metavar='GROUP=TEXT',
                        help='first-column text of a group (repeatable)')
    parser.add_argument('--per', help='regular expression with one capture group: a last '
                        'column with the means per captured value (e.g. `_(d[0-9]+)_s`)')
    parser.add_argument('--per_metrics', nargs='+', default=[],
                        help='metrics of the --per column (default: the first and last metric)')
    parser.add_argument('--per_header', help='header of the --per column')
    parser.add_argument('--first', default='runs', help='header of the first column')
    parser.add_argument('--scale', type=float, default=100.0, help='factor of every value')
    parser.add_argument('--digits', type=int, default=1, help='decimals')
    parser.add_argument('--out', help='write the table to this file (default: print it)')
    args = parser.parse_args(argv)
    if not os.path.isdir(args.log_root):
        print(f'error: {args.log_root}: no such folder', file=sys.stderr)
        return 1
    try:
        labels = parse_labels(args.label)
        re.compile(args.seed_suffix)
        if args.per and re.compile(args.per).groups != 1:
            raise ValueError(f'--per {args.per!r}: needs exactly one capture group')
    except (ValueError, re.error) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    records = [r for r in attach_loss_labels(collect(args.log_root))
               if fnmatch.fnmatchcase(r['run'], args.runs)]
    if not records:
        print(f'error: no evaluations of runs {args.runs!r} in {args.log_root}/*/eval.jsonl',
              file=sys.stderr)
        return 1
    text = table(records, args.metrics, args.group_by, args.seed_suffix, args.order, labels,
                 args.scale, args.digits, args.first, args.per, args.per_metrics,
                 args.per_header)
    if args.out:
        write_atomic(args.out, text)
        print(f'wrote {args.out} ({len(records)} runs)')
    else:
        print(text, end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())
