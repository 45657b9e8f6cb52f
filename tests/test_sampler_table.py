"""scripts/sampler_table.py's bookkeeping: which settings run in which order, and the "≈ DDPM"
mark against the unclipped DDPM reference (the end-to-end run is in test_mnistlt.py)."""
import argparse
import os
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import sampler_table as st  # noqa: E402
from utils import UserError  # noqa: E402


def args(**kw):
    base = dict(samplers='ddim,unipc', steps='10,20', seeds='0,1,2', ddpm_clip_seeds='')
    return argparse.Namespace(**{**base, **kw})


def test_few_step_settings_first_and_ddpm_last():
    rows = st.settings_list(args(), 1000)
    assert [r[:3] for r in rows[:2]] == [('ddim', 10, False), ('ddim', 10, True)]
    assert len(rows) == 2 * 2 * 2 + 2
    assert rows[-2] == ('ddpm', 1000, False, [0, 1, 2])
    assert rows[-1] == ('ddpm', 1000, True, [0, 1, 2])
    assert st.settings_list(args(ddpm_clip_seeds='0'), 1000)[-1] == ('ddpm', 1000, True, [0])
    assert st.settings_list(args(ddpm_clip_seeds='none'), 1000)[-1] == (
        'ddpm', 1000, False, [0, 1, 2])
    with pytest.raises(UserError, match='--ddpm_clip_seeds'):
        st.settings_list(args(ddpm_clip_seeds='0,x'), 1000)
    with pytest.raises(UserError, match='--samplers'):
        st.settings_list(args(samplers='euler'), 1000)


def summary(acc, precision, recall, fid):
    return {'acc': acc, 'precision': precision, 'recall': recall, 'FID': fid}


def test_near_ddpm_is_within_twice_the_reference_spread():
    ref = summary((0.90, 0.01), (0.80, 0.02), (0.70, 0.05), (100.0, 10.0))
    assert st.near_ddpm(summary((0.881, 0), (0.77, 0), (0.61, 0), (119.0, 0)), ref)
    assert not st.near_ddpm(summary((0.879, 0), (0.80, 0), (0.70, 0), (100.0, 0)), ref)
    assert not st.near_ddpm(summary((0.90, 0), (0.759, 0), (0.70, 0), (100.0, 0)), ref)
    assert not st.near_ddpm(summary((0.90, 0), (0.80, 0), (0.59, 0), (100.0, 0)), ref)
    assert not st.near_ddpm(summary((0.95, 0), (0.90, 0), (0.80, 0), (121.0, 0)), ref)


def test_ddpm_rows_are_shown_first_reference_on_top():
    rows = [(('ddim', 10, False), 'a'), (('ddpm', 1000, True), 'c'), (('ddim', 10, True), 'b'),
            (('ddpm', 1000, False), 'r')]
    assert [s for _, s in st.ordered(rows)] == ['r', 'c', 'a', 'b']
