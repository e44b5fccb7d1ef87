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


def test_readme_training_example_runs(tmp_path, monkeypatch, capsys):
    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "L.Trainer" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    results = namespace["results"][0]
    assert 0.0 <= results["test/t2v_R1"] <= 100.0 and results["test/t2v_MnR"] >= 1.0
    assert namespace["trainer"].current_epoch == 2  # trained both epochs
    best = namespace["best"].best_model_path
    assert best.endswith(".ckpt") and namespace["trainer"].ckpt_path == best  # test loaded the best checkpoint
    assert (tmp_path / "runs" / "api").is_dir()
