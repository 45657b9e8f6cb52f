"""Flagfiles are read line by line as absl reads them, but nothing in them is dropped silently:
a line that is not a flag (nor a comment, a blank line, or the value of the flag on the line
before) is a one-line error naming the file and the line; a UTF-8 byte-order mark is stripped
as the editors that write it intend; a flag given twice with different values in one file is
one warning line; nested --flagfile lines are expanded in place as absl does."""
import os

import pytest
from absl import flags

from helpers import ROOT, TINY, run_main

import main
from utils import UserError


def write(path, *lines, bom=False):
    path.write_text(('\ufeff' if bom else '') + '\n'.join(lines) + '\n', encoding='utf-8')
    return str(path)


def absl_lines(path):
    """What absl itself expands `--flagfile=path` to (the reference for valid files)."""
    return flags.FLAGS.read_flags_from_files([f'--flagfile={path}'], force_gnu=False)


def parsed(argv):
    """The flag values that `argv` (main.py's expanded arguments) parses to."""
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        return {n: flags.FLAGS[n].value for n in ('imb_factor', 'lr', 'cb', 'ch_mult', 'train')}
    finally:
        flags.FLAGS.unparse_flags()


# ----------------------------------------------------------------------------------------------
# lines that are not flags

@pytest.mark.parametrize('line', ['imb_factor=0.5', 'imb_factor 0.5', '--', '-', 'train',
                                  '--imb_factor 0.5', '--flagfile'])
def test_a_line_that_is_not_a_flag_is_an_error_naming_file_and_line(tmp_path, line):
    path = write(tmp_path / 'f.txt', '# a comment', '--data_type=digitslt', '', line,
                 '--img_size=8')
    with pytest.raises(UserError) as e:
        main.expand_argv(['main.py', f'--flagfile={path}', '--train'])
    text = str(e.value)
    assert path in text and 'line 4' in text and '\n' not in text, text


def test_an_error_in_a_nested_flagfile_names_that_file(tmp_path):
    inner = write(tmp_path / 'inner.txt', '--lr=0.1', 'lr=0.2')
    outer = write(tmp_path / 'outer.txt', '--cb', f'--flagfile={inner}')
    with pytest.raises(UserError) as e:
        main.expand_argv(['main.py', f'--flagfile={outer}'])
    assert inner in str(e.value) and 'line 2' in str(e.value)
    missing = write(tmp_path / 'outer2.txt', '--cb', f'--flagfile={tmp_path}/nothere.txt')
    with pytest.raises(UserError) as e:
        main.expand_argv(['main.py', f'--flagfile={missing}'])
    assert missing in str(e.value) and 'line 2' in str(e.value) and 'nothere' in str(e.value)


def test_main_refuses_before_writing_anything(tmp_path):
    lines = [a for a in TINY if not a.startswith('--imb_factor')] + ['imb_factor=0.5']
    path = write(tmp_path / 'f.txt', *lines)
    logdir = tmp_path / 'run'
    out = run_main('--train', f'--flagfile={path}', '--total_steps=1', '--save_step=0',
                   '--sample_step=0', f'--logdir={logdir}')
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith('error:')]
    assert len(errors) == 1 and f'line {len(lines)}' in errors[0], out.stderr
    assert not logdir.exists()


# ----------------------------------------------------------------------------------------------
# what stays accepted, as absl reads it

def test_valid_flagfiles_expand_exactly_as_absl_expands_them(tmp_path):
    inner = write(tmp_path / 'inner.txt', '--lr=0.1', '--nocb')
    outer = write(tmp_path / 'outer.txt', '# comment', '  // indented comment', '   ',
                  '--imb_factor=0.2', '--lr', '0.5', f'--flagfile={inner}', '--flagfile=',
                  '--ch_mult=1', '--ch_mult=2', '  --cb  ', '-train', '--logdir=/a path/with spaces')
    expanded = main.expand_argv(['main.py', f'--flagfile={outer}'])[1:]
    # absl keeps an indented comment as an argument (ignored later); we drop it
    assert expanded == [a for a in absl_lines(outer) if a != '// indented comment']
    assert parsed(['main.py'] + expanded) == dict(imb_factor=0.2, lr=0.1, cb=True,
                                                  ch_mult=[1, 2], train=True)


def test_every_shipped_config_and_a_written_flagfile_expand_as_absl_does(tmp_path):
    folder = os.path.join(ROOT, 'config')
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        assert main.expand_argv(['main.py', f'--flagfile={path}'])[1:] == absl_lines(path), name
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(['main.py', '--train', '--ch_mult=1', '--ch_mult=2', '--logdir=x y'])
        written = write(tmp_path / 'flagfile.txt', flags.FLAGS.flags_into_string())
    finally:
        flags.FLAGS.unparse_flags()
    assert main.expand_argv(['main.py', f'--flagfile={written}'])[1:] == absl_lines(written)


def test_a_byte_order_mark_is_stripped(tmp_path):
    path = write(tmp_path / 'f.txt', '--imb_factor=0.5', '--lr=0.3', bom=True)
    expanded = main.expand_argv(['main.py', f'--flagfile={path}'])
    assert expanded[1:] == ['--imb_factor=0.5', '--lr=0.3']
    assert parsed(expanded)['imb_factor'] == 0.5


def test_a_run_on_a_bom_flagfile_trains_on_its_first_line(tmp_path):
    lines = [a for a in TINY if not a.startswith('--imb_factor')]
    path = write(tmp_path / 'f.txt', '--imb_factor=0.5', *lines, bom=True)
    out = run_main('--train', f'--flagfile={path}', '--total_steps=1', '--save_step=0',
                   '--sample_step=0', f'--logdir={tmp_path}/run')
    assert out.returncode == 0, out.stderr[-3000:]
    recorded = (tmp_path / 'run' / 'flagfile.txt').read_text().splitlines()
    assert '--imb_factor=0.5' in recorded
    import dataset
    counts = dataset.build_dataset('digitslt', '', 8, 0.5).class_counts.tolist()
    assert counts != dataset.build_dataset('digitslt', '', 8, 0.01).class_counts.tolist()
    assert f'counts {max(counts)}..{min(counts)}: {counts}' in out.stdout, out.stdout


# ----------------------------------------------------------------------------------------------
# a flag given twice

def warnings_of(capsys):
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith('warning:')]


def test_a_flag_given_twice_with_different_values_is_one_warning(tmp_path, capsys):
    path = write(tmp_path / 'f.txt', '--lr=0.1', '--imb_factor=0.2', '--lr', '0.3', '--lr=0.4',
                 '--cb', '--nocb', '--imb_factor=0.2')
    main.expand_argv(['main.py', f'--flagfile={path}'])
    lines = warnings_of(capsys)
    assert len(lines) == 2, lines
    lr, cb = sorted(lines, key=lambda ln: '--cb' in ln)
    assert '--lr' in lr and path in lr and '--imb_factor' not in lr
    assert '--cb' in cb and path in cb


def test_same_values_multi_flags_and_nested_overrides_do_not_warn(tmp_path, capsys):
    base = write(tmp_path / 'base.txt', '--lr=0.1', '--imb_factor=0.2')
    path = write(tmp_path / 'f.txt', f'--flagfile={base}', '--lr=0.0001', '--lr=1e-4',
                 '--ch_mult=1', '--ch_mult=2', '--attn=0', '--attn=1', '--cls_milestones=3',
                 '--cls_milestones=4', '--cb', '--cb=true', '--imb_factor=0.5')
    main.expand_argv(['main.py', f'--flagfile={path}'])
    assert warnings_of(capsys) == []


def test_a_word_on_the_command_line_that_is_not_a_flag_is_an_error(tmp_path):
    """`main.py --train imb_factor=0.5` would train on the default --imb_factor."""
    from helpers import TINY, run_main
    logdir = tmp_path / 'run'
    out = run_main('--train', *TINY, '--total_steps=1', f'--logdir={logdir}', 'imb_factor=0.5')
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and 'imb_factor=0.5: not a flag' in lines[0]
    assert not logdir.exists()
