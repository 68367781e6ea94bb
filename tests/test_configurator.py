import os
import subprocess
import sys

import pytest

from configurator import ConfigError, configure, format_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = {"n_layer": 4, "learning_rate": 1e-3, "compile": False, "dataset": "facts", "init": None, "flag": None}
TYPES = {"flag": (bool, type(None))}


def cfg(*argv):
    return configure(DEFAULTS, list(argv), TYPES)


def write(tmp_path, text, name="c.py"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_files_then_overrides_in_order(tmp_path):
    f = write(tmp_path, "import math\nn_layer = 8\nlearning_rate = 3e-4\ndef helper(): pass\n_private = 1\n")
    c = cfg(f, "--n_layer=12")
    assert c["n_layer"] == 12 and c["learning_rate"] == 3e-4
    assert cfg("--n_layer=12", f)["n_layer"] == 8  # later wins
    assert DEFAULTS["n_layer"] == 4  # defaults untouched


def test_types():
    assert cfg("--learning_rate=1")["learning_rate"] == 1.0 and isinstance(cfg("--learning_rate=1")["learning_rate"], float)
    assert cfg("--compile=True")["compile"] is True
    assert cfg("--dataset=medium_mix")["dataset"] == "medium_mix"
    assert cfg("--dataset='x y'")["dataset"] == "x y"
    assert cfg("--init=(1, 'a')")["init"] == (1, "a")  # None default: any literal
    assert cfg("--flag=True")["flag"] is True and cfg("--flag=None")["flag"] is None
    with pytest.raises(ConfigError, match=r"'compile' expects bool, got int 1"):
        cfg("--compile=1")
    with pytest.raises(ConfigError, match=r"'n_layer' expects int, got bool"):
        cfg("--n_layer=True")
    with pytest.raises(ConfigError, match=r"'n_layer' expects int, got str 'abc' \(from command line\)"):
        cfg("--n_layer=abc")
    with pytest.raises(ConfigError, match=r"'n_layer' expects int, got float"):
        cfg("--n_layer=2.5")
    with pytest.raises(ConfigError, match=r"'flag' expects bool or None, got int"):
        cfg("--flag=3")
    with pytest.raises(ConfigError, match=r"'dataset' expects str, got int"):
        cfg("--dataset=3")


def test_unknown_keys_name_close_matches(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'n_layers' \(in command line\); did you mean: n_layer"):
        cfg("--n_layers=3")
    f = write(tmp_path, "learning_rat = 1e-3\n")
    with pytest.raises(ConfigError, match=rf"unknown config key 'learning_rat' \(in {f}\); did you mean: learning_rate"):
        cfg(f)
    with pytest.raises(ConfigError, match="no similar keys"):
        cfg("--zzzzzz=1")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: nope.py"):
        cfg("nope.py")
    f = write(tmp_path, "n_layer = 4\nn_head = (\n")
    with pytest.raises(ConfigError, match=r"c\.py:2: syntax error") as e:
        cfg(f)
    assert "\n" not in str(e.value)
    f = write(tmp_path, "x = 1\nn_layer = 1 / 0\n", "d.py")
    with pytest.raises(ConfigError, match=r"d\.py:2: ZeroDivisionError"):
        cfg(f)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="--key=value"):
        cfg("--compile")
    with pytest.raises(ConfigError, match="unknown option '-x'"):
        cfg("-x")


def test_format_marks_changes():
    text = format_config(cfg("--n_layer=6"), DEFAULTS)
    assert "n_layer       = 6  # default 4" in text
    assert "dataset       = 'facts'\n" in text


def script(*argv):
    code = ("import sys; from configurator import configure_or_exit; "
            "configure_or_exit({'n_layer': 4, 'dataset': 'x'}, sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True)


def test_configure_or_exit():
    p = script("--n_layr=3")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["error: unknown config key 'n_layr' (in command line); did you mean: n_layer?"]
    p = script("--help")
    assert p.returncode == 0 and "n_layer" in p.stdout and "usage" in p.stdout
    p = script("--n_layer=5")
    assert p.returncode == 0 and "n_layer = 5  # default 4" in p.stdout
