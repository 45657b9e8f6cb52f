"""Every setting that changes generated images is in the name of the files that hold them, so
that two evaluations with different samplers never overwrite each other and a generated
training set is reused only when the same flags would draw it again."""
import json
import os
import re

import numpy as np
import pytest

from helpers import ROOT, copy_run, fake_cifar10lt_with_stats, run_main, tiny_cfg_t20_run

DIGITS = ['--flagfile', f'{ROOT}/config/classify_digitslt.txt', '--cls_epochs=1',
          '--cls_eval_every=0']


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """FID statistics of fake CIFAR-10 at tmp/stats/c10.npz and a copy of the shared T-20
    conditional run at tmp/run (both made once per pytest run)."""
    tmp = tmp_path_factory.mktemp('names')
    _, env = fake_cifar10lt_with_stats(tmp)
    for suffix in ('', '_feats'):
        os.rename(tmp / 'stats' / f'cifar10.train{suffix}.npz', tmp / 'stats' / f'c10{suffix}.npz')
    logdir = copy_run(tiny_cfg_t20_run(), tmp / 'run')
    return tmp, logdir, env


def evaluate(setup, *extra):
    tmp, logdir, env = setup
    out = run_main(f'--flagfile={logdir}/flagfile.txt', '--notrain', '--eval', '--ckpt_step=1',
                   '--num_images=10', '--batch_size=10', '--noprd', f'--fid_cache={tmp}/stats/c10.npz',
                   '--omega=1.0', *extra, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((logdir / 'eval.jsonl').read_text().splitlines()[-1])


def test_evaluations_with_other_samplers_keep_their_own_files(setup):
    _, logdir, _ = setup
    plain = evaluate(setup)
    ddim = evaluate(setup, '--sampler=ddim', '--sample_steps=5', '--eta=1.0')
    clipped = evaluate(setup, '--sampler=ddim', '--sample_steps=5', '--eta=1.0',
                       '--clip_denoised')
    seeded = evaluate(setup, '--seed=3')
    # the default (DDPM over all T steps, no clipping, seed 0) keeps the reference's name
    assert plain['name'] == 'saved_N10_STEP1'
    assert ddim['name'] == 'saved_N10_STEP1_ddim5quad_eta1'
    assert clipped['name'] == 'saved_N10_STEP1_ddim5quad_eta1_clip'
    assert seeded['name'] == 'saved_N10_STEP1_seed3'
    sets = {}
    for rec in (plain, ddim, clipped, seeded):
        path = logdir / f'cfg_1.0_samples_ema_{rec["name"]}.npy'
        assert path.is_file() and (logdir / f'cfg_1.0_feats_ema_{rec["name"]}.npz').is_file()
        sets[rec['name']] = np.load(path)
        settings = json.loads((logdir / f'cfg_1.0_sampler_ema_{rec["name"]}.json').read_text())
        assert settings['sampler'] == rec['sampler'] and settings['seed'] in (0, 3)
    images = list(sets.values())
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.array_equal(images[i], images[j])
    # --sampled finds each set by the same flags, and refuses a sampler nothing was drawn with
    again = evaluate(setup, '--sampler=ddim', '--sample_steps=5', '--eta=1.0', '--sampled')
    assert again['name'] == ddim['name'] and again['FID'] == pytest.approx(ddim['FID'])
    tmp, _, env = setup
    out = run_main(f'--flagfile={logdir}/flagfile.txt', '--notrain', '--eval', '--ckpt_step=1',
                   '--num_images=10', '--noprd', f'--fid_cache={tmp}/stats/c10.npz',
                   '--omega=1.0', '--sampler=ddim', '--sample_steps=7', '--sampled', env=env)
    assert out.returncode == 2 and 'saved_N10_STEP1_ddim5quad_eta1.npy' in out.stderr


def names_of(*args):
    """(--sample's file stem, --eval's set name) for these command-line arguments, read by
    main.py's own flags."""
    from absl import flags
    import evaluation
    import main
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(['main.py', '--conditional', '--cfg', '--omega=1.0', '--ckpt_step=7',
                     '--num_images=10', *args])
        cfg = main.config()
        return evaluation.sample_stem(cfg), evaluation.sample_name(cfg)
    finally:
        flags.FLAGS.unparse_flags()


def test_without_sample_name_the_files_are_named_after_their_settings():
    """No --sample_name: --sample names its files after what drew them (so two samplers never
    share a file) and --eval keeps the reference's 'saved_N{n}_STEP{step}'; with one, --sample
    writes exactly that stem and --eval puts it in place of 'saved'."""
    stem, name = names_of()
    assert stem == 'sample_cfg_1.0_STEP7' and name == 'saved_N10_STEP7'
    stem, name = names_of('--sampler=ddim', '--sample_steps=5')
    assert stem == 'sample_cfg_1.0_STEP7_ddim5quad_clip' and name == 'saved_N10_STEP7_ddim5quad'
    assert names_of('--sample_name=mine') == ('mine', 'mine_N10_STEP7')


def test_sample_files_carry_the_sampler(setup):
    _, logdir, _ = setup
    base = [f'--flagfile={logdir}/flagfile.txt', '--notrain', '--sample', '--ckpt_step=1',
            '--sample_size=10', '--omega=1.0']
    assert run_main(*base).returncode == 0
    assert run_main(*base, '--sampler=ddim', '--sample_steps=4').returncode == 0
    default = np.load(logdir / 'sample_cfg_1.0_STEP1.npy')       # DDPM, clipped: --sample's own
    ddim = np.load(logdir / 'sample_cfg_1.0_STEP1_ddim4quad_clip.npy')
    assert default.shape == ddim.shape and not np.array_equal(default, ddim)
    # a name of one's own: exactly that stem
    out = run_main(*base, '--sampler=ddim', '--sample_steps=4', '--sample_name=mine')
    assert out.returncode == 0 and 'mine_labels.npy' in out.stdout.splitlines()[-1]
    assert np.array_equal(np.load(logdir / 'mine.npy'), ddim)
    assert (logdir / 'mine.png').is_file() and (logdir / 'mine_sampler.json').is_file()


def test_a_generated_set_is_reused_only_for_the_same_settings(setup, tmp_path):
    _, run, _ = setup
    args = [*DIGITS, f'--synthetic_logdir={run}', '--ckpt_step=1', '--synthetic_fill=3',
            '--sampler=ddim', '--eta=1.0', '--omega=1.0', f'--logdir={tmp_path / "cls"}']
    first = run_main(*args, '--sample_steps=2')
    assert first.returncode == 0, first.stderr[-3000:]
    sets = sorted(p.name for p in (tmp_path / 'cls' / 'synthetic').glob('*_labels.npy'))
    # the readable settings, then the start of the set's key (recognition.sources.set_key)
    key = r'_[0-9a-f]{12}'
    assert len(sets) == 1
    assert re.fullmatch(f'run_cfg_1.0_ddim2quad_eta1_STEP1_fill3_seed0{key}_labels.npy', sets[0])
    # another number of steps draws another set instead of reusing the first
    (tmp_path / 'cls' / 'eval.jsonl').unlink()
    other = run_main(*args, '--sample_steps=4', '--noresume')
    assert other.returncode == 0 and 'reusing' not in other.stdout, other.stdout[-2000:]
    rec = json.loads((tmp_path / 'cls' / 'eval.jsonl').read_text().splitlines()[-1])
    assert (rec['synthetic_sampler'], rec['synthetic_sample_steps'], rec['synthetic_eta'],
            rec['synthetic_clip_denoised'], rec['synthetic_nfe_per_image']) == (
        'ddim', 4, 1.0, False, 8)                                    # guided: 2 per step
    assert rec['sampler'] == 'ddim'
    assert re.search(f'ddim4quad_eta1_STEP1_fill3_seed0{key}.npy$', rec['synthetic'])
    sets = sorted(p.name for p in (tmp_path / 'cls' / 'synthetic').glob('*_labels.npy'))
    assert len(sets) == 2
    assert re.fullmatch(f'run_cfg_1.0_ddim2quad_eta1_STEP1_fill3_seed0{key}_labels.npy', sets[0])
    assert re.fullmatch(f'run_cfg_1.0_ddim4quad_eta1_STEP1_fill3_seed0{key}_labels.npy', sets[1])
    # the same settings again: reused
    (tmp_path / 'cls' / 'eval.jsonl').unlink()
    same = run_main(*args, '--sample_steps=4', '--noresume')
    assert same.returncode == 0 and 'reusing the generated images' in same.stdout
