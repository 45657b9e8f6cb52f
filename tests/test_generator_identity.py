"""`--classify --synthetic_logdir RUN`: a generated set belongs to the generator that drew it
(its weights, checkpoint, guidance and sampler), the generator's own sampling settings and
newest checkpoint are the defaults, and a generator of other data is refused (issue 22, items
1, 4, 5, 11 and 14)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import recognition.sources as RS
from helpers import TINY, run_main, run_main_in_process
from test_classify import DIGITS, assert_user_error, cfg_of, records

FAST = ['--cls_epochs=1', '--synthetic_fill=2']
TRANSLATE = ['--synthetic_source=translate', '--translate_strength=0.5', '--many_shot=100']


@pytest.fixture(scope='module')
def generator(tmp_path_factory):
    """A tiny class-conditional run on digits-LT at 0.1 (ckpt_0, 1, 2) that records guidance
    omega 1 and DDIM in 3 steps as its sampling settings."""
    logdir = tmp_path_factory.mktemp('generator') / 'gen'
    out = run_main('--train', *TINY, '--conditional', '--cfg', '--omega=1.0', '--sampler=ddim',
                   '--sample_steps=3', '--total_steps=3', '--save_step=1', '--sample_step=0',
                   f'--logdir={logdir}')
    assert out.returncode == 0, out.stderr[-3000:]
    return logdir


def other_generator(run, folder):
    """A copy of `run` in `folder` whose EMA weights differ (another generator, same folder
    name as `run`)."""
    shutil.copytree(run, folder)
    g = torch.Generator().manual_seed(1)
    for name in os.listdir(folder):
        if name.startswith('ckpt_'):
            ckpt = torch.load(folder / name, map_location='cpu', weights_only=False)
            for value in ckpt['ema_model'].values():
                if value.is_floating_point():
                    value.add_(0.2 * torch.randn(value.shape, generator=g))
            torch.save(ckpt, folder / name)
    return folder


@pytest.mark.parametrize('source', [[], TRANSLATE], ids=['generate', 'translate'])
def test_a_set_is_drawn_again_for_another_generator(tmp_path, generator, source):
    other = other_generator(generator, tmp_path / 'other' / generator.name)
    logdir = tmp_path / 'cls'
    args = [*DIGITS, *FAST, *source, '--ckpt_step=2', f'--logdir={logdir}']
    first = run_main(*args, f'--synthetic_logdir={generator}')
    assert first.returncode == 0, first.stderr[-3000:]
    rec_a = records(logdir)[-1]
    second = run_main(*args, f'--synthetic_logdir={other}', '--noresume')
    assert second.returncode == 0, second.stderr[-3000:]
    assert 'reusing the generated images' not in second.stdout
    rec_b = records(logdir)[-1]
    assert rec_b['synthetic_logdir'] == str(other) and rec_b['synthetic'] != rec_a['synthetic']
    assert (rec_b['synthetic_generator_weights_sha256']
            != rec_a['synthetic_generator_weights_sha256'])
    assert not np.allclose(np.load(rec_a['synthetic']), np.load(rec_b['synthetic']), atol=1e-3)
    # the first generator again: its own set is reused
    third = run_main(*args, f'--synthetic_logdir={generator}', '--noresume')
    assert third.returncode == 0, third.stderr[-3000:]
    assert f'reusing the generated images {rec_a["synthetic"]}' in third.stdout
    assert records(logdir)[-1]['synthetic'] == rec_a['synthetic']


def test_newest_loadable_checkpoint_unless_a_step_is_given(tmp_path, generator):
    run = tmp_path / 'gen'
    shutil.copytree(generator, run)
    (run / 'ckpt_2.pt').write_bytes((run / 'ckpt_2.pt').read_bytes()[:1000])  # a crash's
    newest = run_main(*DIGITS, *FAST, f'--synthetic_logdir={run}', f'--logdir={tmp_path / "a"}')
    assert newest.returncode == 0, newest.stderr[-3000:]
    assert f'newest loadable checkpoint is {run / "ckpt_1.pt"}' in newest.stdout
    assert 'skipping unreadable checkpoint' in newest.stderr
    rec = records(tmp_path / 'a')[-1]
    assert rec['ckpt_step'] == 1 and rec['synthetic_ckpt_step'] == 1
    assert rec['synthetic_generator_checkpoint'] == str(run / 'ckpt_1.pt')
    # step 0 only when asked for by number: the untrained model, another set
    zero = run_main(*DIGITS, *FAST, f'--synthetic_logdir={run}', '--ckpt_step=0',
                    f'--logdir={tmp_path / "b"}')
    assert zero.returncode == 0, zero.stderr[-3000:]
    rec0 = records(tmp_path / 'b')[-1]
    assert rec0['ckpt_step'] == 0
    assert (rec0['synthetic_generator_weights_sha256']
            != rec['synthetic_generator_weights_sha256'])
    # a run without a loadable checkpoint: one line, nothing written
    for name in ('ckpt_0.pt', 'ckpt_1.pt'):
        (run / name).unlink()
    none = run_main_in_process(*DIGITS, *FAST, f'--synthetic_logdir={run}', f'--logdir={tmp_path / "c"}')
    assert none.returncode == 2 and 'no loadable checkpoint' in none.stderr.splitlines()[-1]
    assert not (tmp_path / 'c').exists()


def test_sampling_settings_default_to_the_generators(tmp_path, generator):
    out = run_main(*DIGITS, *FAST, f'--synthetic_logdir={generator}', '--ckpt_step=2',
                   f'--logdir={tmp_path / "a"}')
    assert out.returncode == 0, out.stderr[-3000:]
    rec = records(tmp_path / 'a')[-1]
    # guidance omega 1 and DDIM in 3 steps, as the run recorded: 2 evaluations per step
    assert rec['omega'] == 1.0 and rec['sample_method'] == 'cfg'
    assert rec['synthetic_sampler'] == 'ddim' and rec['synthetic_sample_steps'] == 3
    assert rec['synthetic_nfe_per_image'] == 6 and rec['synthetic_sampling_given'] == []
    [line] = [x for x in out.stdout.splitlines() if 'drawing with' in x]
    assert '--omega 1.0' in line and '--sampler ddim' in line and 'flagfile.txt' in line
    # given on the command line: they win, and the record says so
    given = run_main(*DIGITS, *FAST, f'--synthetic_logdir={generator}', '--ckpt_step=2',
                     '--omega=0', '--sample_steps=2', f'--logdir={tmp_path / "b"}')
    assert given.returncode == 0, given.stderr[-3000:]
    rec = records(tmp_path / 'b')[-1]
    assert rec['omega'] == 0.0 and rec['synthetic_sample_steps'] == 2
    assert rec['synthetic_nfe_per_image'] == 2 and rec['synthetic_sampler'] == 'ddim'
    assert rec['synthetic_sampling_given'] == ['omega', 'sample_steps']
    saved = json.loads(open(rec['synthetic'][:-4] + '_sampler.json').read())
    assert saved['omega'] == 0.0 and saved['sampling_given'] == ['omega', 'sample_steps']


def test_a_generator_of_other_data_is_refused_unless_asked(tmp_path, generator):
    logdir = tmp_path / 'cls'
    args = [*DIGITS, *FAST, '--ckpt_step=2', f'--logdir={logdir}']
    out = run_main_in_process(*args, '--imb_factor=0.2', f'--synthetic_logdir={generator}')
    assert_user_error(out, logdir, '--imb_factor 0.1 (here 0.2)', '--synthetic_other_data')
    # another data set of the same image size and classes
    mnist = tmp_path / 'mnist'
    shutil.copytree(generator, mnist)
    text = (mnist / 'flagfile.txt').read_text().replace('--data_type=digitslt',
                                                        '--data_type=mnistlt')
    (mnist / 'flagfile.txt').write_text(text)
    out = run_main_in_process(*args, f'--synthetic_logdir={mnist}')
    assert_user_error(out, logdir, '--data_type mnistlt (here digitslt)')
    out = run_main(*args, f'--synthetic_logdir={mnist}', '--synthetic_other_data')
    assert out.returncode == 0, out.stderr[-3000:]
    assert records(logdir)[-1]['num_generated'] == 20


def test_generator_flags_are_read_by_absls_parser(tmp_path):
    model = tmp_path / 'model.txt'
    model.write_text('--T=100\n--beta_T=0.03\n')
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'flagfile.txt').write_text(
        f'# a hand-written flagfile\n--flagfile={model}\n--data_type=digitslt\n'
        '--imb_factor=0.1\n--img_size=8\n--conditional=true\n--augm=false\n--ch_mult=1\n'
        '--ch_mult=2\n--attn=-1\n--omega=2\n--sampler=ddim\n')
    from absl import flags
    cfg = cfg_of(*DIGITS, f'--synthetic_logdir={run}', '--ckpt_step=0', '--sample_steps=7')
    try:  # FLAGS parsed, as in a run: reading the generator's flags leaves them alone
        flags.FLAGS(['main.py', '--omega=0.5'])
        gen = RS.generator_cfg(cfg)
        assert flags.FLAGS.omega == 0.5 and flags.FLAGS.T == 1000
    finally:
        flags.FLAGS.unparse_flags()
    assert gen.T == 100 and gen.beta_T == 0.03 and gen.conditional is True
    assert gen.augm is False and gen.ch_mult == [1, 2] and gen.attn == [-1]
    assert gen.omega == 2.0 and gen.sampler == 'ddim' and gen.sample_steps == 7
    assert gen.ckpt_step == 0 and gen.logdir == str(run)
    # a flagfile absl refuses is one line naming it
    (run / 'flagfile.txt').write_text('--T=many\n--data_type=digitslt\n')
    with pytest.raises(RS.UserError, match='flagfile.txt'):
        RS.generator_cfg(cfg)


# a small feature stage (as tests/test_feature_aug.py's SMALL, fewer steps)
FEATURES = ['--feature_aug', '--T=100', '--beta_T=0.2', '--feat_steps=20', '--feat_width=64',
            '--feat_blocks=1', '--feat_head_epochs=2', '--sampler=ddpm']


def test_drawn_features_belong_to_their_classifier(tmp_path):
    """The feature model and its drawn features are of the classifier they were made with: a
    classifier retrained in the same folder (same epochs) is not taken for the old one."""
    classifier = tmp_path / 'cls'
    train = [*DIGITS, '--cls_epochs=2', f'--logdir={classifier}']
    assert run_main(*train).returncode == 0
    logdir = tmp_path / 'fa'
    args = [*DIGITS, *FEATURES, f'--feature_classifier_logdir={classifier}', f'--logdir={logdir}']
    first = run_main(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    [rec_a] = [json.loads(x) for x in open(logdir / 'feature_aug' / 'eval.jsonl')]
    retrained = run_main(*train, '--noresume', '--cls_lr=0.02')
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    # the feature model in LOGDIR/feature_diffusion is the old classifier's: refused, one line
    again = run_main_in_process(*args)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1, again.stdout[-2000:] + again.stderr[-2000:]
    assert 'features of another classifier' in lines[0]
    # started over: a new feature model, new features, a second record
    fresh = run_main(*args, '--noresume')
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert 'reusing the drawn features' not in fresh.stdout
    rec_b = [json.loads(x) for x in open(logdir / 'feature_aug' / 'eval.jsonl')][-1]
    assert rec_b['settings_hash'] != rec_a['settings_hash']
    assert rec_b['features'] != rec_a['features']
