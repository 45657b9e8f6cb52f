#!/usr/bin/env python
"""TDFA's three augmentations for the rare classes on MNIST-LT, on one table (and the choice of
the sampler for generated training sets), resumable.

    python scripts/mnistlt_tdfa.py [--log_root logs] [--out docs/tdfa_mnistlt.md] [--jobs 2]
        [--seeds 0,1,2] [--diffusion_seeds 0,1] [--rows ROW,...] [--best translate08]
        [--dry-run] [--extra 'FLAGS for every classifier run']
        [--train_extra 'FLAGS for diffusion runs'] [--table_only]
    python scripts/mnistlt_tdfa.py --experiment sampler_choice [--candidates NAME,...]
        [--out docs/synthetic_sampler_choice.md]

Diffusion models (trained first when missing, `config/mnistlt.txt`, 5,000 steps): DDPM
(`--cfg --nocb`) and CBDM (`--cb --tau 1`), one per diffusion seed d, in
LOG_ROOT/mnistlt_{ddpm,cbdm}[_seed{d}]. Classifiers: `config/classify_mnistlt.txt` (the small
CNN, 30 epochs, 1,000 balanced test digits), one per row, classifier seed s and, for rows that
use a diffusion model, diffusion seed d, in LOG_ROOT/tdfa/ROW[_d{d}]_s{s}. Generated and
translated sets are drawn once per model and setting, by the run with classifier seed 0, with
`--omega 1` (the models' training omega) and --classify's default sampler for generated sets
(`--sampler` unset: samplers.RECOMMENDED_SYNTHETIC), and passed to the other seeds as
`--synthetic`.

Rows (table):
  ce, ldam          real images alone, cross-entropy / LDAM-DRW
  resample          class-balanced re-sampling of the real images (the control)
  ddpm, cbdm        + generated images of every class up to the head's count (3,012)
  cbdm_filter       the CBDM images a real-data classifier (row ce, same seed) gives their
                    class with probability >= 0.5
  translate05, translate08
                    + CBDM translations of the many-shot classes' images, strength 0.5 / 0.8
  feat_ddpm, feat_cb
                    feature-level: the ce classifier's last layer re-trained on real + drawn
                    penultimate features, diffusion --cfg --nocb / --cfg --cb --tau 1 (the
                    feature model's seed is the classifier seed)
  best_ldam         the --best row's images with LDAM-DRW (margins and DRW weights from the
                    real counts); runs best_ldam_BEST_d{d}_s{s}, one group per --best
  best_ldam_all     the same with --cls_counts_with_synthetic (from real + generated counts)
  cas_ddpm, cas_cbdm, cas_translate05
                    CAS: 200 generated (translated) images per class alone
Each row is mean ± std over its runs (3 classifier seeds x 2 diffusion seeds where a diffusion
model is used); its last column gives each diffusion model's mean top-1 / few-shot, the
share of the spread that the model accounts for. `--experiment sampler_choice` instead trains
+ DDPM / + CBDM images drawn with each candidate sampler setting (diffusion seed 0, classifier
seeds 0-2) and tabulates them.

A row that reads another's runs brings that row along (best_ldam its --best row, whose seed-0
run draws the set; cbdm_filter cbdm and ce; the feature rows ce). Runs whose eval.jsonl exists
are skipped, an interrupted one resumes; the table is rewritten from what LOG_ROOT holds
(scripts/table_seeds.py; `--table_only` does only that, for the rows of --rows, each with the
runs it has so far). The wall time of the script is printed, and the sum of the wall times
of every run LOG_ROOT holds (each run's log ends with its own: the whole table's work on one
thread, whether it was run in one go or in pieces).
"""
import argparse
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLS_FLAGFILE = os.path.join('config', 'classify_mnistlt.txt')
GEN_FLAGFILE = os.path.join('config', 'mnistlt.txt')
FINAL_STEP = 4999                      # config/mnistlt.txt trains 5,000 steps
GEN = ['--omega=1.0', '--sample_method=cfg', '--batch_size=512']
WALL_LINE = '[mnistlt_tdfa] wall {:.0f} s'   # appended to a run's log when the run ends
# candidate settings of --experiment sampler_choice: name -> sampler flags
CANDIDATES = {
    'ddim50_eta1': ['--sampler=ddim', '--sample_steps=50', '--eta=1.0', '--noclip_denoised'],
    'ddim50_eta1_clip': ['--sampler=ddim', '--sample_steps=50', '--eta=1.0', '--clip_denoised'],
    'sde20_clip': ['--sampler=dpm++2m-sde', '--sample_steps=20', '--clip_denoised'],
    'sde20': ['--sampler=dpm++2m-sde', '--sample_steps=20', '--noclip_denoised'],
}
CANDIDATE_LABELS = {
    'ddim50_eta1': 'stochastic DDIM 50, unclipped',
    'ddim50_eta1_clip': 'stochastic DDIM 50, x0 clipped',
    'sde20_clip': 'DPM-Solver++(2M) SDE 20, x0 clipped',
    'sde20': 'DPM-Solver++(2M) SDE 20, unclipped',
}
ROW_LABELS = {
    'ce': 'real images alone (988), cross-entropy',
    'ldam': 'real images alone, LDAM-DRW',
    'resample': 'real images, class-balanced re-sampling (the control)',
    'ddpm': '+ DDPM images (3,012)',
    'cbdm': '+ CBDM images (3,012)',
    'cbdm_filter': '+ CBDM images, filtered (p >= 0.5 by the ce classifier)',
    'translate05': '+ CBDM translations of the many-shot classes, strength 0.5',
    'translate08': '+ CBDM translations of the many-shot classes, strength 0.8',
    'feat_ddpm': 'feature-level, DDPM-style (--cfg --nocb)',
    'feat_cb': 'feature-level, class-balanced (--cfg --cb --tau 1)',
    'best_ldam': 'the --best row, with LDAM-DRW',
    'best_ldam_all': 'the --best row, with LDAM-DRW on real + generated counts',
    'cas_ddpm': 'CAS: DDPM images alone (200 per class)',
    'cas_cbdm': 'CAS: CBDM images alone (200 per class)',
    'cas_translate05': 'CAS: translations (strength 0.5) alone (200 per class)',
}
# the rows that combine LDAM-DRW with the images of the --best row: their runs are named
# ROW_BEST_d{d}_s{s}, one group per choice of --best
BEST_CHOICES = ('cbdm', 'ddpm', 'translate05', 'translate08')
BEST_ROWS = {'best_ldam': 'with LDAM-DRW',
             'best_ldam_all': 'with LDAM-DRW on real + generated counts'}
LABELS = {**ROW_LABELS,
          **{f'choice_{kind}_{name}': f'+ {kind.upper()} images (3,012), {text}'
             for kind in ('ddpm', 'cbdm') for name, text in CANDIDATE_LABELS.items()},
          **{f'{row}_{best}': f'{ROW_LABELS[best]}, {text}'
             for row, text in BEST_ROWS.items() for best in BEST_CHOICES}}


def group(args, row):
    """The run-name stem of a row: the row itself, or ROW_BEST for the --best rows."""
    return f'{row}_{args.best}' if row in BEST_ROWS else row


def model_dir(log_root, kind, d):
    return os.path.join(log_root, f'mnistlt_{kind}' + (f'_seed{d}' if d else ''))


def train_model(args, kind, d):
    """Train (or resume, or find finished) the diffusion model KIND of diffusion seed d."""
    folder = model_dir(args.log_root, kind, d)
    if os.path.isfile(os.path.join(folder, f'ckpt_{FINAL_STEP}.pt')):
        return folder
    extra = ['--cfg', '--nocb'] if kind == 'ddpm' else []
    run(args, ['--train', '--flagfile', GEN_FLAGFILE, *extra, f'--seed={d}',
               f'--logdir={folder}', *shlex.split(args.train_extra)], folder)
    return folder


def say(line):
    """One whole line to stdout (runs print from several threads; print's text and newline are
    separate writes that interleave)."""
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


def run(args, flags, folder):
    cmd = [sys.executable, 'main.py', *flags]
    say('+ ' + ' '.join(cmd))
    if args.dry_run:
        return
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(folder.rstrip('/') + '.log', 'a') as log:
        start = time.time()
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, OMP_NUM_THREADS='1'))
        log.write('\n' + WALL_LINE.format(time.time() - start) + '\n')
    if done.returncode != 0:
        raise SystemExit(f'error: {" ".join(cmd)} failed (exit {done.returncode}); see '
                         f'{folder}.log')


def logged_wall(log_root):
    """(seconds, logs with a record, logs without) over the run logs of LOG_ROOT/tdfa and the
    diffusion models: the sum of every WALL_LINE (a resumed run has one per attempt), each
    run on one thread; the work of the whole table."""
    pattern = re.compile(re.escape(WALL_LINE).replace(r'\{:\.0f\}', '([0-9]+)'))
    total, timed, untimed = 0, 0, 0
    for path in glob.glob(os.path.join(log_root, 'tdfa', '*.log')) + \
            glob.glob(os.path.join(log_root, 'mnistlt_*.log')):
        with open(path, errors='replace') as f:
            found = [int(x) for x in pattern.findall(f.read())]
        total += sum(found)
        timed, untimed = timed + bool(found), untimed + (not found)
    return total, timed, untimed


def record(folder, feature=False):
    path = os.path.join(folder, 'feature_aug' if feature else '', 'eval.jsonl')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.loads(f.read().splitlines()[-1])


def classify(args, task):
    """One classifier run (name, flags, feature) into LOG_ROOT/tdfa/NAME, skipped when already
    evaluated; returns its eval.jsonl record (None in a dry run)."""
    name, flags, feature = task
    folder = os.path.join(args.log_root, 'tdfa', name)
    if record(folder, feature) is None:
        run(args, ['--flagfile', CLS_FLAGFILE, *flags, f'--logdir={folder}',
                   *shlex.split(args.extra)], folder)
    return record(folder, feature)


SAMPLING = ('--synthetic_logdir', '--ckpt_step', '--synthetic_source', '--translate',
            '--sampler', '--sample_steps', '--eta', '--clip_denoised', '--noclip_denoised')


def row_specs(args):
    """{row: (kind, flags of diffusion seed d)}: kind 'real' (real images), 'set' (images
    drawn by the classifier seed 0 run, passed to the others), 'on_set' (the images of another
    row's set: (base row, extra flags)), 'feature' (the feature stage on the ce classifier)."""
    def model(kind, d):
        return [f'--synthetic_logdir={model_dir(args.log_root, kind, d)}',
                f'--ckpt_step={FINAL_STEP}', *GEN]

    def translated(strength):
        return lambda d: [*model('cbdm', d), '--synthetic_source=translate',
                          f'--translate_strength={strength}']
    cas = ['--synthetic_only', '--synthetic_fill=200']
    return {
        'ce': ('real', ['--cls_loss=ce']),
        'ldam': ('real', ['--cls_loss=ldam_drw']),
        'resample': ('real', ['--cls_loss=ce', '--cls_resample']),
        'ddpm': ('set', lambda d: model('ddpm', d)),
        'cbdm': ('set', lambda d: model('cbdm', d)),
        'cbdm_filter': ('on_set', ('cbdm', ['--synthetic_filter', '--filter_threshold=0.5'])),
        'translate05': ('set', translated('0.5')),
        'translate08': ('set', translated('0.8')),
        'feat_ddpm': ('feature', ['--cfg', '--nocb']),
        'feat_cb': ('feature', ['--cfg', '--cb', '--tau=1.0']),
        'best_ldam': ('on_set', (args.best, ['--cls_loss=ldam_drw'])),
        'best_ldam_all': ('on_set', (args.best, ['--cls_loss=ldam_drw',
                                                 '--cls_counts_with_synthetic'])),
        'cas_ddpm': ('set', lambda d: [*model('ddpm', d), *cas]),
        'cas_cbdm': ('set', lambda d: [*model('cbdm', d), *cas]),
        'cas_translate05': ('set', lambda d: [*translated('0.5')(d), *cas]),
    }


def tasks(args, specs, rows, phase, seeds, d_seeds):
    """The (name, flags, feature) runs of a phase: 1 the real-data rows, 2 the classifier seed 0
    runs that draw each set, 3 everything that reads a set or a real-data classifier."""
    out = []
    ce_dir = os.path.join(args.log_root, 'tdfa', 'ce_s{}')
    for row in rows:
        kind, flags = specs[row]
        if kind == 'real' and phase == 1:
            out += [(f'{row}_s{s}', [*flags, f'--seed={s}'], False) for s in seeds]
        if kind == 'feature' and phase == 3:
            out += [(f'{row}_s{s}', ['--feature_aug', f'--feature_classifier_logdir='
                                     f'{ce_dir.format(s)}', *flags, '--omega=1.0',
                                     f'--seed={s}'], True) for s in seeds]
        if kind == 'set' and phase == 2:
            out += [(f'{row}_d{d}_s{seeds[0]}', [*flags(d), f'--seed={seeds[0]}'], False)
                    for d in d_seeds]
        if kind in ('set', 'on_set') and phase == 3:
            base, extra = (row, []) if kind == 'set' else flags
            base_flags = specs[base][1]
            for d in d_seeds:
                drawn = record(os.path.join(args.log_root, 'tdfa', f'{base}_d{d}_s{seeds[0]}'))
                path = drawn['synthetic'] if drawn else f'SET_OF_{base}_d{d}_s{seeds[0]}'
                keep = [f for f in base_flags(d) if not f.startswith(SAMPLING)]
                for s in (seeds[1:] if kind == 'set' else seeds):
                    if '--synthetic_filter' in extra:
                        extra_s = [*extra, f'--filter_logdir={ce_dir.format(s)}']
                    else:
                        extra_s = extra
                    out.append((f'{group(args, row)}_d{d}_s{s}',
                                [*keep, *extra_s, f'--synthetic={path}', f'--seed={s}'], False))
    return out


def with_prerequisites(specs, rows):
    """ROWS and, after them, the rows they read: the base row of an 'on_set' row (its set is
    drawn by the base's seed-0 run) and 'ce' for the filter and feature rows (its classifiers)."""
    out = list(rows)
    for row in rows:
        kind, flags = specs[row]
        needs = [flags[0]] if kind == 'on_set' else []
        if kind == 'feature' or '--synthetic_filter' in (flags[1] if kind == 'on_set' else []):
            needs.append('ce')
        out += [n for n in needs if n not in out]
    return out


def run_phases(args, specs, rows, seeds, d_seeds):
    rows_run = with_prerequisites(specs, rows)
    if rows_run != rows:
        say(f'also running {",".join(rows_run[len(rows):])} (read by --rows)')
    rows = rows_run
    for phase in (1, 2, 3):
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda task: classify(args, task),
                          tasks(args, specs, rows, phase, seeds, d_seeds)))


def write_table(args, rows):
    """The table of every group of runs LOG_ROOT/tdfa holds: ROWS first, in that order, then
    the others (e.g. the sampler_choice rows), each with its label."""
    seed_suffix = r'(_d[0-9]+)?_s[0-9]+(/feature_aug)?$'
    order = []
    for row in rows:   # a --best row: the chosen images first, then the other choices run
        order += [group(args, row)] + [f'{row}_{b}' for b in BEST_CHOICES if b != args.best] \
            if row in BEST_ROWS else [row]
    cmd = [sys.executable, os.path.join('scripts', 'table_seeds.py'),
           os.path.join(args.log_root, 'tdfa'), '--seed_suffix', seed_suffix,
           '--order', *order, '--out', args.out, '--per', r'_(d[0-9]+)_s',
           '--per_header', 'top-1 / few per diffusion seed']
    for row, label in LABELS.items():
        cmd += ['--label', f'{row}={label}']
    say('+ ' + ' '.join(cmd))
    if not args.dry_run:
        subprocess.run(cmd, cwd=ROOT, check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--log_root', default='logs')
    ap.add_argument('--out', default='')
    ap.add_argument('--jobs', type=int, default=2, help='runs at a time (one thread each)')
    ap.add_argument('--seeds', default='0,1,2')
    ap.add_argument('--diffusion_seeds', default='0,1')
    ap.add_argument('--rows', default=','.join(ROW_LABELS))
    ap.add_argument('--best', default='translate08', choices=BEST_CHOICES,
                    help='the images of the rows best_ldam and best_ldam_all (their runs are '
                    'named best_ldam[_all]_BEST_d{d}_s{s}, so each choice keeps its own runs)')
    ap.add_argument('--experiment', default='table', choices=['table', 'sampler_choice'])
    ap.add_argument('--candidates', default=','.join(CANDIDATES))
    ap.add_argument('--extra', default='', help='flags appended to every classifier run (e.g. '
                    'fewer epochs for a quick check)')
    ap.add_argument('--train_extra', default='', help='flags appended to every diffusion '
                    'training run')
    ap.add_argument('--dry-run', dest='dry_run', action='store_true')
    ap.add_argument('--table_only', action='store_true',
                    help='only rewrite the table from the runs LOG_ROOT holds')
    args = ap.parse_args(argv)
    args.log_root = os.path.abspath(args.log_root)
    start = time.time()
    seeds = [int(s) for s in args.seeds.split(',')]
    d_seeds = [int(d) for d in args.diffusion_seeds.split(',')]
    needs_models = not args.table_only and (args.experiment == 'sampler_choice' or any(
        row_specs(args).get(r, ('real',))[0] in ('set', 'on_set') for r in args.rows.split(',')))
    models = [(k, d) for k in ('ddpm', 'cbdm') for d in
              (d_seeds if args.experiment == 'table' else [0])] if needs_models else []
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda m: train_model(args, *m), models))
    if args.experiment == 'sampler_choice':
        args.out = args.out or os.path.join('docs', 'synthetic_sampler_choice.md')
        specs = {f'choice_{kind}_{name}': ('set', lambda d, k=kind, n=name: [
            f'--synthetic_logdir={model_dir(args.log_root, k, d)}', f'--ckpt_step={FINAL_STEP}',
            *GEN, *CANDIDATES[n]]) for name in args.candidates.split(',')
            for kind in ('ddpm', 'cbdm')}
        if not args.table_only:
            run_phases(args, specs, list(specs), seeds, [0])
        write_table(args, list(specs))
    else:
        args.out = args.out or os.path.join('docs', 'tdfa_mnistlt.md')
        rows = args.rows.split(',')
        specs = row_specs(args)
        unknown = [r for r in rows if r not in specs]
        if unknown:
            raise SystemExit(f'error: --rows: unknown {unknown}; choose from {list(specs)}')
        if not args.table_only:
            run_phases(args, specs, rows, seeds, d_seeds)
        write_table(args, rows)
    print(f'done in {time.time() - start:.0f} s; table {args.out}')
    total, timed, untimed = logged_wall(args.log_root)
    print(f'the runs {args.log_root} holds took {total / 3600:.1f} h on one thread each '
          f'({timed} logs' + (f'; {untimed} without a wall-time line)' if untimed else ')'))


if __name__ == '__main__':
    main()
