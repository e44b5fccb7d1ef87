"""The package works from its wheel, not only from the checkout; the minimum versions are the ones tested."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO


def minimums() -> dict[str, str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    found = {}
    for line in config["options"]["install_requires"].strip().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][0-9.]*)", line.strip())
        assert match, f"setup.cfg: {line!r} states no minimum version"
        found[match[1].lower()] = match[3]
    return found


def test_every_minimum_of_setup_cfg_is_pinned_for_make_test_min():
    pinned = dict(line.split("==") for line in (REPO / "constraints-min.txt").read_text().splitlines() if "==" in line)
    for name, version in minimums().items():
        assert name in pinned, f"constraints-min.txt does not pin {name}"
        assert [int(x) for x in pinned[name].split(".")] >= [int(x) for x in version.split(".")], name
        assert pinned[name].startswith(version), (
            f"{name}: setup.cfg says >={version}, make test-min installs {pinned[name]}"
        )


def test_the_version_has_one_source():
    import xclip_lightning

    assert "version = attr: xclip_lightning.__version__" in (REPO / "setup.cfg").read_text()
    assert re.fullmatch(r"\d+\.\d+\.\d+", xclip_lightning.__version__)


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run([*build, str(REPO)], check=True, timeout=300)
    (wheel,) = wheels.glob("xclip_lightning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"xclip_lightning/configs/msrvtt/vitb32.yaml", "xclip_lightning/configs/synthetic.yaml"} <= set(names)

    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    site = next(fresh.glob("lib/python*/site-packages"))
    # the dependencies come from the test environment's site-packages (a plain path: its .pth files, among them
    # the editable install of this checkout, are not read); the package itself only from the wheel
    (site / "dependencies.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(fresh / "bin" / "python"), "install", "--quiet"]
    subprocess.run([*install, "--no-deps", str(wheel)], check=True, timeout=300)

    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(fresh / "bin" / "xclip-lightning"), *args], cwd=work, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    where = subprocess.run(
        [str(fresh / "bin" / "python"), "-c", "import xclip_lightning; print(xclip_lightning.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(site))
    assert "a packaged name" in run("--help").stdout and "search" in run("--help").stdout
    printed = yaml.safe_load(run("fit", "--config", "msrvtt/vitb32", "--print_config").stdout)
    assert printed["data"]["benchmark"] == "msrvtt" and printed["model"]["max_frames"] == 12
    run("demo", "--videos", "6", "2", "2", "--data-only")
    annotations = work / ".cache" / "synthetic" / "data" / "annotations.jsonl"
    assert len(annotations.read_text().splitlines()) == 10 and (work / ".cache" / "synthetic" / "clip").is_dir()
