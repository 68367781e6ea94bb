"""
Settings for train.py, sample.py and bench.py: `python train.py config/x.py --key=value ...`.

As in nanoGPT, a script's defaults are plain values, config files (Python files of `key = value` lines)
and `--key=value` overrides are applied over them in order. Unlike nanoGPT's exec over globals with
asserts, this is an importable function: an unknown key names the closest valid keys, a value of the
wrong type names the key and the expected type, a missing or broken config file says so, all in one
line (ConfigError), and configure_or_exit turns that into `error: ...` and exit status 2, no traceback.
"""

import ast
import difflib
import sys
import types as _types
from typing import Any


class ConfigError(Exception):
    """A user mistake in a config file or on the command line; the message is one line."""


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join("None" if x is type(None) else x.__name__ for x in t)
    return t.__name__


def _check(key: str, value: Any, expected, source: str) -> Any:
    """Returns value converted to the expected type, or raises ConfigError."""
    if expected is None:  # a None default with no declared type: any literal
        return value
    allowed = expected if isinstance(expected, tuple) else (expected,)
    for t in allowed:
        if t is bool or isinstance(value, bool):  # bool is an int subclass: match bools only with bool
            if t is bool and isinstance(value, bool):
                return value
            continue
        if t is float and isinstance(value, int):
            return float(value)
        if isinstance(value, t):
            return value
    raise ConfigError(f"config key '{key}' expects {_type_name(expected)}, got {type(value).__name__} {value!r} (from {source})")


def _unknown(key: str, known, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"did you mean: {', '.join(close)}?" if close else "no similar keys (--help lists them)"
    return ConfigError(f"unknown config key '{key}' (in {source}); {hint}")


def read_config_file(path: str) -> dict[str, Any]:
    """The settings a config file makes (its top-level names, less modules, functions and classes)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    ns: dict[str, Any] = {"__file__": path}
    try:
        exec(compile(text, path, "exec"), ns)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        line = f":{tb.tb_lineno}" if tb is not None else ""
        raise ConfigError(f"{path}{line}: {type(e).__name__}: {e}") from None
    skip = (_types.ModuleType, _types.FunctionType, type)
    return {k: v for k, v in ns.items() if not k.startswith("_") and not isinstance(v, skip)}


def _parse_override(arg: str, defaults: dict, types: dict) -> tuple[str, Any]:
    if "=" not in arg:
        raise ConfigError(f"'{arg}' has no value: write overrides as --key=value")
    key, raw = arg[2:].split("=", 1)
    if key not in defaults:
        raise _unknown(key, defaults, "command line")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        expected = types.get(key, type(defaults[key]) if defaults[key] is not None else None)
        wants_str = expected is str or (isinstance(expected, tuple) and str in expected)
        if not wants_str:
            what = _type_name(expected) if expected is not None else "a Python literal"
            raise ConfigError(f"config key '{key}' expects {what}, got str {raw!r} (from command line)") from None
        value = raw  # --dataset=facts means the string 'facts'
    return key, value


def configure(defaults: dict[str, Any], argv: list[str], types: dict[str, Any] | None = None,
              touched: set[str] | None = None) -> dict[str, Any]:
    """Applies config files and --key=value overrides in argv, in order, over defaults; returns a new dict.
    Expected types are types[key], else the type of the default (None defaults accept any literal).
    touched, if given, receives the keys that argv set (whatever their values)."""
    types = types or {}
    config = dict(defaults)
    for arg in argv:
        if arg.startswith("--"):
            items, source = [_parse_override(arg, defaults, types)], "command line"
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option '{arg}': arguments are config files and --key=value overrides")
        else:
            items, source = read_config_file(arg).items(), arg
        for key, value in items:
            if key not in defaults:
                raise _unknown(key, defaults, source)
            expected = types.get(key, type(defaults[key]) if defaults[key] is not None else None)
            config[key] = _check(key, value, expected, source)
            if touched is not None:
                touched.add(key)
    return config


def format_config(config: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """`key = value` lines in the config's order; values changed from defaults are marked."""
    width = max((len(k) for k in config), default=0)
    lines = []
    for k, v in config.items():
        changed = defaults is not None and k in defaults and defaults[k] != v
        lines.append(f"{k:<{width}} = {v!r}" + (f"  # default {defaults[k]!r}" if changed else ""))
    return "\n".join(lines)


def configure_or_exit(defaults: dict[str, Any], argv: list[str], types: dict[str, Any] | None = None,
                      print_config: bool = True, touched: set[str] | None = None) -> dict[str, Any]:
    """configure() for scripts: --help lists the keys; a ConfigError prints `error: ...` and exits 2."""
    if "--help" in argv or "-h" in argv:
        print(f"usage: {sys.argv[0]} [config_file.py ...] [--key=value ...]\n\nkeys and defaults:")
        print(format_config(defaults))
        sys.exit(0)
    try:
        config = configure(defaults, argv, types, touched)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if print_config:
        print(format_config(config, defaults), flush=True)
    return config
