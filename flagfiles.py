"""Reading flagfiles as absl's read_flags_from_files does, but refusing what absl would pass on
silently: main.expand_argv's flagfile reader. It takes the flag definitions (an absl FlagValues)
as an argument and never reads the global FLAGS (main.py does)."""
import os
import sys

from absl import flags

from utils import UserError


def _flag_name(arg):
    """(name, value or None) of a flag argument '--name=value' / '-name' (one or two dashes)."""
    name, eq, value = arg.lstrip('-').partition('=')
    return name, (value if eq else None)


def _takes_next_line(name, flag_values, value_flags):
    """Whether '--name' alone on a flagfile line takes the next line as its value (absl: a
    defined non-boolean flag; also one of `value_flags`, undefined flags that take a value)."""
    if name in flag_values:
        return not flag_values[name].boolean
    return name in value_flags


def _flag_setting(name, value, flag_values):
    """(flag name, comparable value) that a flagfile's '--name[=value]' sets: booleans as
    True / False (--name, --noname, --name=false), other values parsed by the flag's own parser
    so that 0.0001 equals 1e-4; a value its parser refuses (absl reports it later) as text."""
    if (name not in flag_values and name.startswith('no') and name[2:] in flag_values
            and value is None):
        return name[2:], False
    if name in flag_values and flag_values[name].boolean and value is None:
        return name, True
    try:
        return name, flag_values[name].parser.parse(value) if name in flag_values else value
    except (ValueError, TypeError, flags.Error):
        return name, value


def _warn_repeated(path, settings, flag_values):
    """One warning line per single-valued flag that `settings` ({name: [(line, raw value,
    parsed value)]}, one flagfile's own lines) sets to different values."""
    for name, given in settings.items():
        if name in flag_values and isinstance(flag_values[name], flags.MultiFlag):
            continue  # --ch_mult 1 --ch_mult 2: each line adds an entry
        if len({repr(v) for _, _, v in given}) > 1:
            values = ', '.join(f'line {n}: {raw}' for n, raw, _ in given)
            print(f'warning: flagfile {path} gives --{name} {len(given)} times with different '
                  f'values ({values}); the last one applies', file=sys.stderr)


def read_flagfile(path, flag_values, value_flags=frozenset(), stack=()):
    """The arguments of flagfile `path` for the flags of `flag_values` (value_flags: names it
    does not define that take a value, dropped later by the caller), as absl's
    read_flags_from_files expands them: one per line, stripped; blank lines and comments (# or
    //) skipped; a '--flagfile=F' line expanded in place (F relative to the working directory; a file already being expanded is ignored
    with a warning). Stricter than absl, which passes anything else on as a positional
    argument that the run then ignores: a UTF-8 byte-order mark is stripped (editors write it
    as a file signature); a line that is not a flag ('--name', '--name=value', one or two
    dashes), nor the value of a non-boolean flag named alone on a line before it (absl's
    '--lr' then '0.1'), is a UserError naming the file and line. A single-valued flag given
    twice with different values in the file itself is one warning line (a nested flagfile's
    values may differ: a later line overrides them on purpose)."""
    if path in stack:
        print(f'warning: flagfile {stack[-1]} includes {path} inside itself; ignoring that '
              f'--flagfile', file=sys.stderr)
        return []
    try:
        with open(path, encoding='utf-8-sig') as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise UserError(f'flagfile {path}: not UTF-8 text') from None
    except OSError as e:
        raise UserError(f'--flagfile {path}: cannot be read ({e.strerror})') from None
    args, settings, pending = [], {}, None  # pending: (line, name) awaiting its value line
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        where = f'flagfile {path} line {n}'
        if not line or line.startswith(('#', '//')):
            continue
        if pending is not None:
            if line.startswith('-'):
                break  # the flag before has no value: reported below
            args.append(line)
            parsed = _flag_setting(pending[1], line, flag_values)[1]
            settings.setdefault(pending[1], []).append((pending[0], line, parsed))
            pending = None
            continue
        name, value = _flag_name(line)
        if not line.startswith('-') or not name or any(c.isspace() for c in name):
            raise UserError(f'{where}: {line!r} is not a flag; write --name=value, one flag per '
                            f'line (comments start with # or //)')
        if name == 'flagfile':
            if value is None:
                raise UserError(f'{where}: {line!r}: write --flagfile=PATH on one line')
            if not value.strip():
                continue  # absl ignores an empty --flagfile=
            nested = os.path.expanduser(value.strip())
            if not os.path.isfile(nested):
                raise UserError(f'{where}: --flagfile {nested}: no such file')
            args += read_flagfile(nested, flag_values, value_flags, stack + (path,))
            continue
        args.append(line)
        if value is None and _takes_next_line(name, flag_values, value_flags):
            pending = (n, name)
            continue
        setting = _flag_setting(name, value, flag_values)
        settings.setdefault(setting[0], []).append((n, value or line, setting[1]))
    if pending is not None:
        raise UserError(f'flagfile {path} line {pending[0]}: --{pending[1]} has no value; write '
                        f'--{pending[1]}=VALUE')
    _warn_repeated(path, settings, flag_values)
    return args
