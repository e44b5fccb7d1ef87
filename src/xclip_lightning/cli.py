"""The ``xclip-lightning`` command: LightningCLI ``fit`` / ``validate`` / ``test`` / ``predict`` with YAML configs.

    xclip-lightning fit --config configs/msrvtt/vitb32.yaml --data.annotations /data/msrvtt_data \\
        --data.videos /data/MSRVTT/videos/all
    xclip-lightning test --config configs/msrvtt/vitb32.yaml --ckpt_path runs/msrvtt-vitb32/version_0/\\
        checkpoints/last.ckpt
    xclip-lightning fit --config configs/synthetic.yaml --print_config
    xclip-lightning export --ckpt_path CKPT --out DIR        # and index / search: see tools.py

The CLIP name, ``max_words`` and ``max_frames`` are given once, on the model, and linked to the data module (the
tokenizer and the frame slots must agree with the head's AOSM matrices). With ``--ckpt_path`` the model is built
from the CLIP config and tokenizer stored in the checkpoint, so ``test`` / ``validate`` / ``predict`` and resuming
need neither the original CLIP folder nor the original working directory. Each run writes its logs (CSV), its
checkpoints (``best-*.ckpt``: best val text->video R@1; ``last.ckpt``: the end of the latest epoch) and the
resolved config under ``runs/<name>/version_<n>/``;
``predict`` writes the text and video features there too (``predictions/``, see ``callbacks.FeatureWriter``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

TOOLS = ("export", "index", "search", "demo", "convert")
DESCRIPTION = (
    "X-CLIP text-video retrieval. Training: fit / validate / test / predict (LightningCLI; --config takes a YAML "
    "file or a packaged config by name, e.g. msrvtt/vitb32, didemo/vitb16, ablations/tab7_mean_mean, synthetic). "
    "Your own videos: export / index / search (e.g. `xclip-lightning search --help`). The demo: demo."
)  # subcommands beside LightningCLI's fit / validate / test / predict


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``xclip-lightning``; ``main([...])`` runs it from Python (as the tests do)."""
    from xclip_lightning.packaged import UnknownConfig, resolve_configs

    try:
        argv = resolve_configs(sys.argv[1:] if args is None else args)
    except UnknownConfig as err:  # an expected mistake: one line, no traceback
        print(f"xclip-lightning: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args is None:
        sys.argv[1:] = argv  # the command line as LightningCLI will read it, packaged configs resolved
    if argv and argv[0] in TOOLS:
        from xclip_lightning import tools  # the search tools do not need LightningCLI
        from xclip_lightning.index.store import VideoIndexError

        try:
            return getattr(tools, argv[0])(argv[1:])
        except VideoIndexError as err:  # an expected mistake: one line, no traceback
            print(f"xclip-lightning {argv[0]}: {tools.terminal_safe(err)}", file=sys.stderr)
            raise SystemExit(1) from None
    from xclip_lightning.data.datamodule import VideoTextDataModule
    from xclip_lightning.lightning_cli import XCLIPCLI, trainer_defaults
    from xclip_lightning.lightning_module import XCLIPRetrieval

    XCLIPCLI(
        XCLIPRetrieval,
        VideoTextDataModule,
        seed_everything_default=42,  # official seed
        trainer_defaults=trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        args=argv if args is not None else None,  # None: LightningCLI reads sys.argv (rewritten below) itself
        parser_kwargs={"description": DESCRIPTION},
    )


if __name__ == "__main__":
    main()  # from sys.argv, as under torchrun -m xclip_lightning.cli fit ... (no args: LightningCLI does not warn)
