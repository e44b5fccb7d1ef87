"""The HTML page of ``xclip-lightning search --html``: per query, the ranked moments, each a player that starts at
the moment (``<video>`` with the media fragment ``#t=start,end``, the file linked relative to the page so the page
works opened from disk and when the folder moves with its videos) beside the strip of its sampled frames, the frame
that matched the query best outlined; a click on a frame plays from its time. Thumbnails are inlined, as the index
verified them (never through a link). A file a browser cannot play (MPEG-TS, AVI, ...) gets its link and a note
instead of a dead player: ``xclip-lightning serve`` converts such moments on the fly."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from xclip_lightning.index.encode import THUMB_HEIGHT
from xclip_lightning.index.records import SearchHit, clock
from xclip_lightning.serve.media import MediaError, playback

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h2 { margin-top: 1.5em; }
ol { padding-left: 1.5em; }
li.hit { margin: 0 0 1.2em 0; }
.meta { font-size: 0.9em; color: #555; }
.strip { position: relative; display: inline-block; margin-top: 0.3em; line-height: 0; }
.frames { position: absolute; inset: 0; display: flex; }
.frames button { flex: 0 0 64px; height: 64px; padding: 0; border: 0; background: transparent; cursor: pointer; }
.frames button:hover, .frames button:focus-visible { outline: 3px solid #2e6be4; outline-offset: -3px; }
.frames button.best { box-shadow: inset 0 0 0 3px #e4572e; }
.moment { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
video { width: 320px; max-width: 100%; background: #000; }
.note { font-size: 0.85em; color: #555; max-width: 320px; }
"""
SCRIPT = """
document.addEventListener("click", (event) => {
  const button = event.target.closest(".frames button");
  const video = button && button.closest("li").querySelector("video");
  if (video) { video.currentTime = Number(button.dataset.time); video.play().catch(() => {}); }
});
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
    try:
        plays = playback(hit.path).direct
    except MediaError:
        plays = True  # the browser says what is wrong with it
    if not plays:
        kind = Path(hit.path).suffix.lstrip(".").upper() or "this format"
        return (
            f'<div class="note">{html.escape(kind)} does not play in a browser: open the file in a video player, '
            f"or search with <code>xclip-lightning serve</code>, which converts the moment.</div>"
        )
    src = html.escape(video_url(hit.path, page) + media_fragment(hit))
    return f'<video controls preload="metadata" src="{src}"></video>'


def _strip(jpeg: bytes | None, hit: SearchHit) -> str:
    """The thumbnail strip (the bytes the index verified), a button on each frame (play from its time), the best
    frame outlined."""
    if jpeg is None:
        return '<div class="meta">(no thumbnail)</div>'
    data = base64.b64encode(jpeg).decode()
    h = THUMB_HEIGHT
    best = ' class="best"'
    buttons = "".join(
        f'<button type="button" data-time="{t:.3f}" title="play from {clock(t)}" aria-label="play from {clock(t)}"'
        f"{best if i == hit.best_frame else ''}></button>"
        for i, t in enumerate(hit.timestamps)
    )
    return (
        f'<div class="strip"><img alt="sampled frames" src="data:image/jpeg;base64,{data}" '
        f'width="{h * len(hit.timestamps)}" height="{h}"><div class="frames">{buttons}</div></div>'
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
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head><body>',
        f'<h1>Video search</h1><p class="meta">index: {html.escape(str(index_folder))}'
        f"{' &middot; scoring: ' + html.escape(scorer) if scorer else ''}</p>",
    ]
    for query, results in zip(queries, hits, strict=True):
        parts.append(f'<section class="query"><h2>{html.escape(query)}</h2><ol>')
        for hit in results:
            link = html.escape(video_url(hit.path, path))
            parts.append(
                f'<li class="hit"><div><a href="{link}"><strong>{html.escape(hit.path)}</strong></a></div>'
                f'<div class="meta">{clock(hit.start)}-{clock(hit.end)} &middot; score {hit.score:.2f} &middot; best '
                f"frame {hit.best_frame + 1} of {len(hit.timestamps)} at {clock(hit.best_time)}</div>"
                f'<div class="moment">{_player(hit, path)}{_strip(thumbnail(hit), hit)}</div></li>'
            )
        parts.append("</ol></section>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
