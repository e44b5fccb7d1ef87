"""The command line as a new user meets it: every expected mistake is at most three lines on stderr with the words
that name it and a non-zero exit, never a traceback (``--debug`` shows it); ``--help`` shows the whole tool and
every default; arguments are parsed before torch is imported; nothing is left behind by a refused command."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import synthetic_model
from xclip_lightning.cli import COMMANDS, main
from xclip_lightning.model.xclip import XCLIP

ENTRY_POINT = Path(sys.executable).with_name("xclip-lightning")
HEAVY = ("torch", "transformers", "lightning")


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed command, as a user runs it (``python -m`` when the entry point is not installed)."""
    command = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "xclip_lightning.cli"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    environment.pop("XCLIP_DEBUG", None) if "XCLIP_DEBUG" not in (env or {}) else None
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=environment, check=False
    )


def one_line_error(run: subprocess.CompletedProcess, *words: str, code: int = 1) -> str:
    """The run failed with ``code`` and at most three lines on stderr, no traceback, holding every one of ``words``."""
    err = run.stderr.strip()
    lines = [line for line in err.splitlines() if not line.startswith("Seed set to")]  # Lightning's own log line
    assert run.returncode == code, (run.returncode, err)
    assert 1 <= len(lines) <= 3 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    return err


def imported_after(code: str) -> list[str]:
    """The heavy packages a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.split("HEAVY ")[-1].replace("'", '"'))


@pytest.fixture(scope="module")
def model_and_videos(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A saved model, a folder of 3 synthetic videos and an index of them."""
    root = tmp_path_factory.mktemp("cli")
    _, annotations = synthetic_model(root, videos=3, seed=11)
    main(["index", "--model", str(root / "model"), "--videos", str(annotations.parent / "videos"),
          "--out", str(root / "index"), "--workers", "0"])  # fmt: skip
    return root / "model", annotations.parent / "videos", root / "index"


# ---- mistakes -----------------------------------------------------------------------------------------------------


def test_a_mistyped_packaged_config_names_the_close_ones():
    err = one_line_error(cli("fit", "--config", "msrvtt/vitb23"), "msrvtt/vitb23", "msrvtt/vitb32", code=2)
    assert "no packaged config" in err


def test_an_unknown_command_names_the_close_ones():
    one_line_error(cli("serach", "a dog"), "unknown command 'serach'", "did you mean search", code=2)


@pytest.mark.parametrize("option", ["--ckpt_path", "--ckpt-path"])
def test_export_of_a_missing_checkpoint_is_one_line(tmp_path, option):
    run = cli("export", option, str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "out"))
    one_line_error(run, f"{tmp_path / 'nope.ckpt'}: no such checkpoint file")
    assert not (tmp_path / "out").exists()


def test_test_with_a_missing_checkpoint_creates_nothing(tmp_path):
    run = cli("test", "--config", "synthetic", "--ckpt_path", "runs/x/version_0/checkpoints/last.ckpt", cwd=tmp_path)
    one_line_error(run, "runs/x/version_0/checkpoints/last.ckpt: no such checkpoint file")
    assert list(tmp_path.iterdir()) == []  # no runs/<name>/version_N/ left behind


def test_a_folder_given_as_checkpoint_says_what_folders_are_for(tmp_path):
    one_line_error(
        cli("export", "--ckpt-path", str(tmp_path), "--out", str(tmp_path / "o")), "a folder, not a checkpoint"
    )


def test_bad_checkpoints_are_one_line_each(tmp_path, capsys):
    """Truncated, of the wrong kind (a bare state dict), from a newer version: in-process, as the command runs them."""
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    bare = tmp_path / "pytorch_model.bin"
    torch.save({"clip.w": torch.zeros(2)}, bare)
    newer = tmp_path / "newer.ckpt"
    torch.save({"state_dict": {}, "xclip_checkpoint_format": 99}, newer)
    for file, words in (
        (truncated, "not a readable checkpoint"),
        (bare, "not a Lightning checkpoint (no state_dict)"),
        (newer, "written by a newer xclip-lightning (checkpoint format 99"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--ckpt-path", str(file), "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert f"{file}: {words}" in err and len(err.strip().splitlines()) == 1 and "weights_only" not in err
    assert not (tmp_path / "out").exists()
    one_line_error(cli("export", "--ckpt-path", str(truncated), "--out", str(tmp_path / "o")), "not a readable")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x00\xff\xfe binary \x00", "truncated.yaml: not a YAML text file"),
        (b"- a\n- list\n", "truncated.yaml: holds a list, not a mapping of options"),
        (b"trainer:\n  max_epochs: [unclosed\n", "truncated.yaml: not valid YAML"),
    ],
)
def test_an_unreadable_config_is_one_line(tmp_path, capsys, content, words):
    config = tmp_path / "truncated.yaml"
    config.write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and words in err, err


def test_search_of_a_missing_index_is_one_line(tmp_path):
    one_line_error(cli("search", "--index", str(tmp_path / "nope"), "a dog"), str(tmp_path / "nope"))


def test_search_of_a_folder_that_is_no_index_or_a_newer_one(model_and_videos, tmp_path):
    _, _, index = model_and_videos
    one_line_error(cli("search", "--index", str(tmp_path), "a dog"), str(tmp_path))
    newer = tmp_path / "newer"
    shutil.copytree(index, newer)
    with sqlite3.connect(newer / "index.sqlite") as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    one_line_error(cli("search", "--index", str(newer), "a dog"), "index format 99")


def test_search_html_into_a_missing_folder_fails_before_searching(model_and_videos, tmp_path):
    _, _, index = model_and_videos
    run = cli("search", "--index", str(index), "a dog", "--html", str(tmp_path / "no" / "page.html"))
    one_line_error(run, f"the folder {tmp_path / 'no'} does not exist", code=2)


def test_index_with_another_window_or_model_says_the_fix(model_and_videos, tmp_path):
    model, videos, index = model_and_videos
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    run = cli("index", "--model", str(model), "--videos", str(videos), "--out", str(copy), "--window", "10")
    one_line_error(run, "was built with --window 30, not 10", "pass --window 30")
    other = tmp_path / "other-model"
    weights = XCLIP.from_pretrained(model)  # the same config, one weight changed
    with torch.no_grad():
        next(weights.head.parameters()).add_(1.0)
    weights.save_pretrained(other)
    run = cli("index", "--model", str(other), "--videos", str(videos), "--out", str(copy))
    one_line_error(run, "was built by another model", "Choose another --out")


def test_convert_offline_without_a_tokenizer_says_how_to_give_one(tmp_path):
    from test_convert import random_openai_state

    torch.save(random_openai_state(), tmp_path / "clip.pt")
    run = cli("convert", "--openai-clip", str(tmp_path / "clip.pt"), "--out", str(tmp_path / "out"))
    one_line_error(run, "--tokenizer", "bpe_simple_vocab_16e6.txt.gz", "local CLIP folder")
    assert not (tmp_path / "out").exists()
    one_line_error(
        cli("convert", "--official", str(tmp_path / "nope.bin"), "--out", str(tmp_path / "o")), "no such file"
    )


def test_debug_shows_the_traceback():
    for run in (cli("fit", "--config", "msrvtt/vitb23", "--debug"), cli("fit", "--config", "msrvtt/vitb23",
                                                                            env={"XCLIP_DEBUG": "1"})):  # fmt: skip
        assert run.returncode != 0 and "Traceback" in run.stderr and "UnknownConfig" in run.stderr


# ---- help -------------------------------------------------------------------------------------------------------


def test_the_help_lists_every_command():
    run = cli("--help")
    assert run.returncode == 0
    for command in (*COMMANDS, "--debug"):
        assert f"  {command} " in run.stdout
    assert set(COMMANDS) >= {"fit", "validate", "test", "predict", "export", "index", "search", "convert", "demo"}
    assert cli().returncode == 2


@pytest.mark.parametrize(
    ("command", "defaults"),
    [
        ("search", ["--candidates", "--per-video", "--top-k"]),
        ("index", ["--workers", "--device", "--approximate", "--batch-size", "--window", "--fps", "--devices"]),
        ("demo", ["--videos"]),
    ],
)
def test_every_option_of_our_commands_shows_its_default(command, defaults):
    blocks = re.split(r"\n  (?=-)", cli(command, "--help").stdout)  # one per option, with its wrapped help lines
    for option in defaults:
        (block,) = [b for b in blocks if b.startswith(f"{option} ")]
        assert "default" in block, block


def test_our_options_are_kebab_case():
    import xclip_lightning.tools as tools

    for command in ("export", "index", "search", "convert"):
        text = cli(command, "--help").stdout
        options = {word.strip("[],") for word in text.split() if word.startswith(("--", "[--"))}
        snake = {o for o in options if "_" in o.split("=")[0] and o != "--ckpt_path"}
        assert not snake, (command, snake)
    assert tools.export.__doc__


# ---- fast start -------------------------------------------------------------------------------------------------


def test_help_and_argument_errors_import_no_torch():
    for args in (["--help"], ["search", "--help"], ["index", "--help"], ["demo", "--help"], ["export", "--help"],
                 ["search", "--index", "x", "q", "--top-k", "0"]):  # fmt: skip
        code = f"from xclip_lightning.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass"
        assert imported_after(code) == [], args


def test_lightning_help_is_cached_and_the_same(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "100"}
    first = cli("fit", "--help", env=env)
    assert first.returncode == 0 and "--trainer.max_epochs" in first.stdout
    assert len(list((tmp_path / "xclip-lightning").glob("help-fit-*.txt"))) == 1
    again = cli("fit", "--help", env=env)
    assert again.stdout == first.stdout
    code = f"import os\nos.environ.update({env!r})\nfrom xclip_lightning.cli import main\nmain(['fit', '--help'])"
    assert imported_after(code) == []  # served from the cache


def test_search_imports_no_lightning(model_and_videos):
    _, _, index = model_and_videos
    code = f"from xclip_lightning.cli import main\nmain(['search', '--index', {str(index)!r}, 'a red circle'])"
    assert "lightning" not in imported_after(code)


# ---- the tokenizer from OpenAI's BPE file -----------------------------------------------------------------------

MERGES = [("d", "o"), ("do", "g</w>"), ("c", "a"), ("ca", "t"), ("cat", "s</w>"), ("r", "e"), ("re", "d</w>"),
          ("a", "l"), ("b", "al"), ("l", "l</w>"), ("bal", "l</w>"), ("'", "s</w>"), ("!", "!</w>"), ("4", "2</w>"),
          ("o", "g</w>"), ("t", "h"), ("th", "e</w>")]  # fmt: skip


def byte_symbols() -> list[str]:
    """The 256 symbols in CLIP's order, written out from the rule: printable Latin-1 as itself, the rest 256+."""
    kept = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    rest = [b for b in range(256) if b not in kept]
    return [chr(b) for b in kept] + [chr(256 + n) for n in range(len(rest))]


def slow_bpe(text: str, merges: list[tuple[str, str]]) -> list[str]:
    """CLIP's tokenizing of ASCII text, plainly: words, their last symbol with </w>, best-ranked pair merged first."""
    import re

    ranks = {pair: i for i, pair in enumerate(merges)}
    tokens = []
    for word in re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()):
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(itertools.pairwise(parts)))
            if rank == len(ranks):
                break
            pair, merged, j = (parts[i], parts[i + 1]), [], 0
            while j < len(parts):
                if tuple(parts[j : j + 2]) == pair:
                    merged, j = [*merged, pair[0] + pair[1]], j + 2
                else:
                    merged, j = [*merged, parts[j]], j + 1
            parts = merged
        tokens += parts
    return tokens


def write_bpe(path: Path, merges: list[tuple[str, str]]) -> Path:
    path.write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n").encode()))
    return path


def test_the_tokenizer_built_from_openais_bpe_file_tokenizes_as_clip(tmp_path):
    from xclip_lightning.convert import tokenizer_from_bpe

    tokenizer = tokenizer_from_bpe(write_bpe(tmp_path / "bpe_simple_vocab_16e6.txt.gz", MERGES))
    symbols = byte_symbols()
    vocab = [*symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in MERGES), "<|startoftext|>", "<|endoftext|>"]
    for text in ("The dog's ball!!", "red cats, 42 dogs", "a   bAll\tthe   cat"):
        expected = [vocab.index(t) for t in ["<|startoftext|>", *slow_bpe(text, MERGES), "<|endoftext|>"]]
        assert tokenizer(text).input_ids == expected, text


def test_the_full_size_bpe_file_gives_clips_vocabulary(tmp_path):
    from xclip_lightning.convert import tokenizer_from_bpe

    symbols = [s for s in byte_symbols() if s.isprintable() and not s.isspace()]
    merges = [(a, b) for a in symbols for b in symbols][:60000]  # more lines than CLIP uses, as in OpenAI's file
    tokenizer = tokenizer_from_bpe(write_bpe(tmp_path / "bpe.txt.gz", merges))
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)  # CLIP's ids
    assert tokenizer.convert_tokens_to_ids("!") == 0


def test_convert_with_the_bpe_file_needs_no_download(tmp_path):
    from test_convert import WIDTH, random_openai_state

    bpe = write_bpe(tmp_path / "bpe_simple_vocab_16e6.txt.gz", MERGES)
    state = random_openai_state()
    state["token_embedding.weight"] = torch.randn(512 + len(MERGES) + 2, WIDTH) * 0.02
    torch.save(state, tmp_path / "clip.pt")
    run = cli("convert", "--openai-clip", str(tmp_path / "clip.pt"), "--out", str(tmp_path / "out"),
              "--tokenizer", str(bpe))  # fmt: skip
    assert run.returncode == 0, run.stderr
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "out")("the dog").input_ids[1:-1] == [
        512 + MERGES.index(("th", "e</w>")),
        512 + MERGES.index(("do", "g</w>")),
    ]
    state["token_embedding.weight"] = torch.randn(300, WIDTH)
    torch.save(state, tmp_path / "small.pt")
    run = cli("convert", "--openai-clip", str(tmp_path / "small.pt"), "--out", str(tmp_path / "o2"), "--tokenizer",
              str(bpe))  # fmt: skip
    one_line_error(run, f"has {512 + len(MERGES) + 2} tokens, more than the 300 of the weights' text tower")
