"""The variant registry: built-ins, plugin files and installed entry points."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dropbench.harness.errors import DropbenchError
from dropbench.variants import load_registry

REPO = Path(__file__).resolve().parents[1]
BUILTINS = {"none", "zaremba", "moon", "moon-emb", "variational-tied", "variational-untied"}

PLUGIN = textwrap.dedent('''
    from dropbench.variants import SEQUENCE, Variant
    RECURRENT_ONLY = Variant(name="recurrent-only", description="variational mask on h_{t-1} only",
                             masks={"recurrent": SEQUENCE}, p={"recurrent": 0.3})
''')


def test_builtins_are_found(registry):
    assert BUILTINS <= set(registry)
    assert all(registry[name].source == "built-in" for name in BUILTINS)


def test_plugin_file_adds_variants(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(PLUGIN)
    registry = load_registry([path])
    assert registry["recurrent-only"].masks == {"recurrent": "sequence"}
    assert str(path) in registry["recurrent-only"].source


@pytest.mark.parametrize("text, message", [
    ("import not_a_module_anywhere\n", "failed to import"),
    ("x = 1\n", "defines no Variant"),
    (PLUGIN.replace("recurrent-only", "zaremba"), "already taken"),
    (PLUGIN.replace('{"recurrent": SEQUENCE}', '{"recurrent": "always"}'), "failed to import"),
])
def test_bad_plugins_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(DropbenchError, match=message):
        load_registry([path])


def test_entry_point_plugins_are_found(tmp_path):
    """A real installed distribution (a .dist-info on sys.path) registering a variant."""
    (tmp_path / "my_variants.py").write_text(PLUGIN)
    info = tmp_path / "my_variants-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-variants\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[dropbench.variants]\nrecurrent-only = my_variants:RECURRENT_ONLY\n")
    code = "from dropbench.variants import load_registry; v = load_registry()['recurrent-only']; print(v.source)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": ""}).stdout
    assert "entry point my_variants:RECURRENT_ONLY" in out


def test_variants_command_lists_name_description_and_source(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(PLUGIN)
    out = subprocess.run([sys.executable, "-m", "dropbench.harness.cli", "variants", "--json", "--plugin", str(path)],
                         capture_output=True, text=True, check=True).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    assert BUILTINS | {"recurrent-only"} <= set(rows)
    assert rows["zaremba"]["source"] == "built-in" and rows["zaremba"]["description"]
    assert rows["recurrent-only"]["source"].startswith("plugin")


def readme_plugin() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    plugins = [b for b in blocks if "Variant(" in b]
    assert plugins, "README shows no plugin"
    return plugins[0]


def test_readme_plugin_is_short_and_works(tmp_path, data_dir):
    code = readme_plugin()
    assert len(code.strip().splitlines()) <= 40
    path = tmp_path / "readme_plugin.py"
    path.write_text(code)
    registry = load_registry([path])
    new = [name for name, variant in registry.items() if variant.source.startswith("plugin")]
    assert new, "the README plugin registers no new variant"
    name = new[0]
    result = subprocess.run(
        [sys.executable, "-m", "dropbench.harness.cli", "run", "smoke", "--plugin", str(path), "--only", name,
         "--out", str(tmp_path / "out"), "--no-progress", "--data-dir", str(data_dir), "--set", "epochs=1"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    results = (tmp_path / "out" / "results.csv").read_text()
    assert f",{name}," in results and ",done," in results
