"""A use's default sampler settings are decided in samplers.py alone (USE_DEFAULTS, UNSET_FLAGS,
default_settings): the flags' defaults in main.py, factory.sampler_settings and the file names of
evaluation.settings_suffix all follow it."""
import pytest

import samplers
from evaluation import settings_suffix
from factory import sampler_settings
from test_fidelity import make_cfg


def test_unset_flags_are_the_defaults_of_main_py():
    """UNSET_FLAGS stands for 'no sampler flag given'; were main.py's default of one of these
    flags another value, an unset flag would resolve to other settings than the file names
    assume."""
    from absl import flags
    import main  # noqa: F401  (defines the flags)
    assert {name: flags.FLAGS[name].default for name in samplers.UNSET_FLAGS} == \
        samplers.UNSET_FLAGS


@pytest.mark.parametrize('use', list(samplers.USE_DEFAULTS))
def test_unset_flags_draw_with_the_use_default_and_name_nothing(use):
    cfg = make_cfg()
    assert sampler_settings(cfg, use) == samplers.default_settings(use, cfg.skip_type, cfg.T)
    assert settings_suffix(cfg, use) == ''


def test_file_names_compare_with_the_use_default_not_with_the_given_steps(monkeypatch):
    """A use whose default is a sampler with steps (here DDIM, 50 steps by default): a set drawn
    with --sample_steps 20 is not the default set and must not take its file name. (Before,
    evaluation built its own 'default' from the flags as given, steps included, and named both
    sets alike.)"""
    monkeypatch.setitem(samplers.USE_DEFAULTS, 'eval', {'sampler': 'ddim',
                                                        'clip_denoised': False})
    assert settings_suffix(make_cfg(), 'eval') == ''
    assert settings_suffix(make_cfg('--sample_steps=20'), 'eval') == '_ddim20quad'
    # the default of another use is untouched: --sample's auto ignores --sample_steps
    assert settings_suffix(make_cfg('--sample_steps=20'), 'sample') == ''
