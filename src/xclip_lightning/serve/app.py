"""The HTTP side of ``xclip-lightning serve``: a FastAPI app over one resident ``VideoIndex``.

    GET /api/search?q=TEXT&k=10&per_video=N&min_score=X  -> {"query", "hits": [...], "took_ms"}
    GET /api/similar?id=ID&k=10&per_video=N              -> {"id", "hits": [...], "took_ms"} (more like this)
    GET /api/health                                      -> {"status": "ok", "entries", "index_version"}
    GET /media/ID                                        the indexed file of a hit (Range requests), or its moment
                                                         transcoded to MP4 when Chromium cannot play the file
    GET /thumbs/ID                                       the JPEG strip of a hit's sampled frames
    GET /                                                the search page

A hit is what ``xclip-lightning search --jsonl`` prints for it (the same fields, order and scores) plus
``media_url``, ``thumbnail_url`` and ``media_start`` (the file time at the player's time 0: the moment's start for a
transcoded moment, 0 otherwise). Every error is JSON ``{"error": "..."}`` with a 4xx status that says what is wrong.
Queries run one at a time on one dedicated thread (``Library``): the machine's cores go to each query's matrix products.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from xclip_lightning.index.defaults import DEFAULT_CANDIDATES
from xclip_lightning.index.records import IndexEntry, SearchHit
from xclip_lightning.index.store import VideoIndexError
from xclip_lightning.index.video_index import VideoIndex, scorer_name
from xclip_lightning.serve.media import ClipCache, MediaError, Playback, byte_range, playback, transcode_moment

MAX_QUERY = 1000  # characters (CLIP reads 77 tokens; anything longer is a mistake or an attack)
MAX_K = 1000
COOKIE = "xclip_token"


class ApiError(Exception):
    """A request that cannot be answered: its status and what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _number(request: Request, name: str, kind: type, default: Any, low: float | None = None, high: float | None = None):
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ApiError(400, f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and value != value:  # NaN
        raise ApiError(400, f"{name} must be a number, got {text!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ApiError(400, f"{name} must be from {low:g} to {high:g}, got {text}")
    return value


class Library:
    """The index as the server holds it, the folder its files must stay in, how each file plays.

    Every use of the model and the index runs on one dedicated thread, one at a time: the database connection and the
    model are not shared between threads, and torch's OpenMP workers belong to the thread that starts them. Queries
    run on the request threads instead (one OpenMP team each, spinning against each other on the same cores) took
    twice as long here: 22 ms against 11 ms at 100,000 moments.
    """

    def __init__(self, index: VideoIndex, candidates: int | None = DEFAULT_CANDIDATES) -> None:
        self.index, self.candidates = index, candidates
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="xclip-search")
        self.root = os.path.realpath(index.store.meta.get("videos") or "/")
        self._playback: dict[tuple, Playback] = {}
        self.clips = ClipCache()

    def _run(self, work: Callable[[], Any]) -> Any:
        return self.worker.submit(work).result()

    def health(self) -> dict[str, Any]:
        def answer() -> dict[str, Any]:
            self.index.refresh()  # follows a newly published version
            return {"status": "ok", "entries": self.index.store.count(), "index_version": self.index.store.version()}

        return self._run(answer)

    def search(self, query: str, k: int, per_video: int | None) -> list[SearchHit]:
        return self._run(lambda: self.index.search([query], k=k, candidates=self.candidates, per_video=per_video)[0])

    def similar(self, moment: str, k: int, per_video: int | None) -> list[SearchHit]:
        return self._run(lambda: self.index.similar(moment, k=k, candidates=self.candidates, per_video=per_video))

    def moment(self, moment: str) -> IndexEntry:
        """The indexed moment of a hit id; 404 for an unknown id or one of a moment no longer indexed."""
        entry = self._run(lambda: self.index.moment(moment))
        if entry is None:
            raise ApiError(404, f"no indexed moment has the id {moment[:40]!r}")
        return entry

    def thumbnail(self, entry: IndexEntry) -> bytes | None:
        return self._run(lambda: self.index.thumbnail(entry))

    def safe_path(self, path: str) -> str:
        """The file of an indexed moment, refused when it resolves outside the indexed folder (a symlink that
        leaves it) or is not a regular file any more."""
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.root]) != self.root or not os.path.isfile(real):
            raise ApiError(404, "the file of this moment is not available")
        return real

    def playback(self, path: str) -> Playback:
        stat = os.stat(path)
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key not in self._playback:
            self._playback[key] = playback(path)
        return self._playback[key]


def hit_json(library: Library, hit: SearchHit) -> dict[str, Any]:
    """A hit as ``search --jsonl`` prints it, with what the page needs to play it."""
    try:
        direct = library.playback(library.safe_path(hit.path)).direct
    except (ApiError, MediaError, OSError):
        direct = True  # /media answers with the reason
    return {
        **asdict(hit),
        "media_url": f"/media/{hit.id}",
        "thumbnail_url": f"/thumbs/{hit.id}",
        "media_start": 0.0 if direct else hit.start,
        "media_converted": not direct,
    }


def create_app(index: VideoIndex, token: str | None = None, candidates: int | None = DEFAULT_CANDIDATES) -> FastAPI:
    """The app serving ``index``; with ``token`` every request needs it (``Authorization: Bearer``, or the cookie
    that ``/?token=...`` sets)."""
    app = FastAPI(title="xclip-lightning", docs_url=None, redoc_url=None, openapi_url=None)
    library = Library(index, candidates)
    library.search("warming up", 1, None)  # the first stage is loaded, on the search thread, before the first query
    page = resources.files("xclip_lightning.serve").joinpath("page.html").read_text(encoding="utf-8")
    page = page.replace("{{SCORER}}", scorer_name(index.model))
    app.state.library = library

    async def authorize(request: Request, call_next):
        given = request.headers.get("authorization", "")
        bearer = given[7:] if given.lower().startswith("bearer ") else ""
        if hmac.compare_digest(bearer, token) or hmac.compare_digest(request.cookies.get(COOKIE, ""), token):
            return await call_next(request)
        if request.url.path == "/" and hmac.compare_digest(request.query_params.get("token", ""), token):
            rest = {k: v for k, v in request.query_params.items() if k != "token"}
            response = RedirectResponse("/" + (f"?{urlencode(rest)}" if rest else ""), status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        return JSONResponse({"error": "a token is needed: open /?token=TOKEN once, or send Authorization: Bearer "
                                      "TOKEN"}, status_code=401)  # fmt: skip

    if token is not None:  # without a token no middleware at all (each one costs every request)
        app.middleware("http")(authorize)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = "no such page" if err.status_code == 404 else str(err.detail)
        return JSONResponse({"error": message}, status_code=err.status_code)

    @app.exception_handler(VideoIndexError)
    async def index_error(request: Request, err: VideoIndexError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=503)

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(err).__name__}); see the server's log"}, status_code=500)

    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    # the routes answer JSONResponse themselves: FastAPI's own encoding of a returned dict (jsonable_encoder) walks
    # every float of every hit and cost more than the search (bench/serve.py)
    @app.get("/api/health")
    def health() -> JSONResponse:
        return JSONResponse(library.health())

    @app.get("/api/search")
    def search(request: Request) -> JSONResponse:
        started = time.perf_counter()
        query = request.query_params.get("q", "").strip()
        if not query:
            raise ApiError(400, "q (the text to search for) is missing or empty")
        if len(query) > MAX_QUERY:
            raise ApiError(400, f"q is {len(query)} characters long; at most {MAX_QUERY}")
        k = _number(request, "k", int, 10, 1, MAX_K)
        per_video = _number(request, "per_video", int, None, 1, MAX_K)
        min_score = _number(request, "min_score", float, None, -1e9, 1e9)
        hits = library.search(query, k, per_video)
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
        hits = [hit_json(library, h) for h in hits]
        return JSONResponse({"query": query, "hits": hits, "took_ms": (time.perf_counter() - started) * 1000})

    @app.get("/api/similar")
    def similar(request: Request) -> JSONResponse:
        started = time.perf_counter()
        moment = request.query_params.get("id", "")
        library.moment(moment)
        k = _number(request, "k", int, 10, 1, MAX_K)
        per_video = _number(request, "per_video", int, None, 1, MAX_K)
        hits = library.similar(moment, k, per_video)
        hits = [hit_json(library, h) for h in hits]
        return JSONResponse({"id": moment, "hits": hits, "took_ms": (time.perf_counter() - started) * 1000})

    @app.get("/media/{moment}")
    def media(moment: str, request: Request) -> Response:
        entry = library.moment(moment)
        path = library.safe_path(entry.path)
        try:
            how = library.playback(path)
            if how.direct:
                return _file(path, how.media_type, request.headers.get("range"))
            stat = os.stat(path)
            key = (path, stat.st_size, stat.st_mtime_ns, entry.start, entry.end)
            data = library.clips.get(key, lambda: transcode_moment(path, entry.start, entry.end))
        except MediaError as err:
            raise ApiError(422, str(err)) from None
        return _bytes(data, "video/mp4", request.headers.get("range"))

    @app.get("/thumbs/{moment}")
    def thumbnail(moment: str) -> Response:
        data = library.thumbnail(library.moment(moment))
        if data is None:
            raise ApiError(404, "this moment has no thumbnail (missing or damaged: `index --verify` repairs it)")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app


def _unsatisfiable(err: ValueError, size: int) -> JSONResponse:
    return JSONResponse({"error": str(err)}, status_code=416, headers={"Content-Range": f"bytes */{size}"})


def _file(path: str, media_type: str, range_header: str | None) -> Response:
    """A file from disk, with one byte range when asked (206), streamed."""
    size = os.path.getsize(path)
    try:
        span = byte_range(range_header, size)
    except ValueError as err:
        return _unsatisfiable(err, size)
    if span is None:
        return FileResponse(path, media_type=media_type, headers={"Accept-Ranges": "bytes"})
    first, last = span

    def chunks():
        with open(path, "rb") as f:
            f.seek(first)
            left = last - first + 1
            while left > 0:
                data = f.read(min(left, 1 << 20))
                if not data:
                    return
                left -= len(data)
                yield data

    headers = {"Content-Range": f"bytes {first}-{last}/{size}", "Accept-Ranges": "bytes",
               "Content-Length": str(last - first + 1)}  # fmt: skip
    return StreamingResponse(chunks(), status_code=206, media_type=media_type, headers=headers)


def _bytes(data: bytes, media_type: str, range_header: str | None) -> Response:
    try:
        span = byte_range(range_header, len(data))
    except ValueError as err:
        return _unsatisfiable(err, len(data))
    if span is None:
        return Response(data, media_type=media_type, headers={"Accept-Ranges": "bytes"})
    first, last = span
    headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}", "Accept-Ranges": "bytes"}
    return Response(data[first : last + 1], status_code=206, media_type=media_type, headers=headers)
