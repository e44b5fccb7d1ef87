"""The HTML page of ``xclip-lightning search --html``: per query, the ranked moments, each a player that starts at
the moment (``<video>`` with the media fragment ``#t=start,end``, the file linked relative to the page so the page
works opened from disk and when the folder moves with its videos) beside the strip of its sampled frames, the frame
that matched the query best outlined. Thumbnails are inlined, as the index verified them (never through a link)."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from xclip_lightning.index.encode import THUMB_HEIGHT
from xclip_lightning.index.records import SearchHit

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h2 { margin-top: 1.5em; }
ol { padding-left: 1.5em; }
li.hit { margin: 0 0 1.2em 0; }
.meta { font-size: 0.9em; color: #555; }
.strip { position: relative; display: inline-block; margin-top: 0.3em; line-height: 0; }
.best { position: absolute; top: 0; box-sizing: border-box; border: 3px solid #e4572e; }
.moment { display: flex; gap: 1em; align-items: flex-start; }
video { width: 320px; background: #000; }
"""


def video_url(video: str | Path, page: Path) -> str:
    """The video's URL as the page at ``page`` must write it: relative to the page's folder (percent-encoded, so
    '#', '?', '%' and spaces in names stay part of the path), or a file URL when no relative path exists."""
    try:
        relative = os.path.relpath(Path(video).resolve(), page.resolve().parent)
    except ValueError:  # another drive (Windows)
        return Path(video).resolve().as_uri()
    return quote(Path(relative).as_posix(), safe="/")


def media_fragment(hit: SearchHit) -> str:
    """``#t=start,end`` (seconds, W3C Media Fragments): the player starts at the moment and pauses at its end."""
    return f"#t={hit.start:.3f},{hit.end:.3f}"


def _player(hit: SearchHit, page: Path) -> str:
    src = html.escape(video_url(hit.path, page) + media_fragment(hit))
    return f'<video controls preload="metadata" src="{src}"></video>'


def _strip(jpeg: bytes | None, hit: SearchHit) -> str:
    """The thumbnail strip (the bytes the index verified), the best frame outlined."""
    if jpeg is None:
        return '<div class="meta">(no thumbnail)</div>'
    data = base64.b64encode(jpeg).decode()
    h = THUMB_HEIGHT
    return (
        f'<div class="strip"><img alt="sampled frames" src="data:image/jpeg;base64,{data}" '
        f'width="{h * len(hit.timestamps)}" height="{h}">'
        f'<div class="best" style="left:{hit.best_frame * h}px;width:{h}px;height:{h}px" '
        f'title="best match at {hit.best_time:.1f} s"></div></div>'
    )


def write_html(
    path: str | Path,
    index_folder: str | Path,
    queries: Sequence[str],
    hits: Sequence[Sequence[SearchHit]],
    scorer: str = "",
    thumbnail: Callable[[SearchHit], bytes | None] = lambda hit: None,
) -> Path:
    """Write the results page to ``path``; returns it. ``thumbnail``: a hit's verified strip
    (``VideoIndex.thumbnail``)."""
    index_folder, path = Path(index_folder), Path(path)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>xclip-lightning search</title>',
        f"<style>{STYLE}</style></head><body>",
        f'<h1>Video search</h1><p class="meta">index: {html.escape(str(index_folder))}'
        f"{' &middot; scoring: ' + html.escape(scorer) if scorer else ''}</p>",
    ]
    for query, results in zip(queries, hits, strict=True):
        parts.append(f'<section class="query"><h2>{html.escape(query)}</h2><ol>')
        for hit in results:
            parts.append(
                f'<li class="hit"><div><strong>{html.escape(hit.path)}</strong></div>'
                f'<div class="meta">{hit.start:.1f}-{hit.end:.1f} s &middot; score {hit.score:.2f} &middot; best '
                f"frame {hit.best_frame + 1} of {len(hit.timestamps)} at {hit.best_time:.1f} s</div>"
                f'<div class="moment">{_player(hit, path)}{_strip(thumbnail(hit), hit)}</div></li>'
            )
        parts.append("</ol></section>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
