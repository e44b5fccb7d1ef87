"""The README's Python example runs as written (in a temporary folder)."""

from __future__ import annotations

import re

from conftest import REPO


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["sim"].shape == (3, 3)
    assert "R1" in capsys.readouterr().out
    assert (tmp_path / "runs" / "my-xclip" / "model.safetensors").is_file()
