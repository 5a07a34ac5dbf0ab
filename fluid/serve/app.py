"""``fluid serve``: the interactive page, a small ASGI app (Starlette, run by uvicorn).

Why not Gradio: the page needs one form, a few images that update as tokens are
generated, and a queue. Starlette + uvicorn do that in ~1 MB of dependencies and start in
about a second, where Gradio brings ~100 MB, a front-end build and its own queue and
analytics settings to switch off for offline use. Our page is one HTML file with plain
JavaScript, so what the browser test checks is all there is.

Routes:

    GET  /                         the page
    GET  /api/info                 served models, their defaults, the limits
    POST /api/jobs                 queue a request (JSON form fields) -> {id, position}
    GET  /api/jobs/{id}/events     its progress as server-sent events (frames as PNG data URLs)
    GET  /healthz                  liveness, models loaded, queue length

Bad requests get HTTP 400 with ``{"error": sentence, "errors": {field: sentence}}``; a full
queue 503; nothing ever answers with a traceback. A client may name itself with the header
``X-Fluid-Client`` (the page does, once per tab): clients take turns in the queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fluid.serve.requests import ALL, Limits, RequestError, parse_request
from fluid.serve.worker import Job, ModelSet, QueueFull, Scheduler

log = logging.getLogger("fluid.serve")

MAX_BODY = 16 * 1024  # bytes: a prompt of 200 characters and seven numbers need far less
KEEP_FINISHED_S = 600  # finished jobs stay readable this long (a page may reconnect)
MAX_JOBS = 2000  # and at most this many are remembered
KEEPALIVE_S = 15  # a comment line this often keeps proxies from closing an idle stream
EXAMPLES = (
    "a red square",
    "a blue circle left of a yellow triangle",
    "three green crosses",
    "a purple cross and an orange circle",
    "two triangles",
)


def page_html() -> str:
    return resources.files("fluid.serve").joinpath("page.html").read_text(encoding="utf-8")


def _error(status: int, message: str, errors: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "errors": errors or {}}, status_code=status)


class JobTable:
    """Jobs by id; finished ones are forgotten after ``KEEP_FINISHED_S`` or beyond ``MAX_JOBS``."""

    def __init__(self):
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()

    def add(self, job: Job) -> None:
        self._prune()
        self._jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def _prune(self) -> None:
        now = time.perf_counter()
        for job_id, job in list(self._jobs.items()):
            old = job.finished and job.done_at is not None and now - job.done_at > KEEP_FINISHED_S
            if old or (job.finished and len(self._jobs) >= MAX_JOBS):
                del self._jobs[job_id]


def client_key(request: Request) -> str:
    """Whose line a request joins: the page's id for its tab (so that tabs, and people behind
    one address, take turns), else the address it came from."""
    tab = request.headers.get("x-fluid-client", "")[:64]
    host = request.client.host if request.client else ""
    return f"{host}/{tab}"


def sse(index: int, kind: str, data: dict) -> str:
    return f"id: {index + 1}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def job_events(job: Job, start: int) -> AsyncIterator[str]:
    """The job's events from index ``start`` on, as they come, until its ``end``."""
    job.watchers += 1
    job.watched = True
    sent = start
    try:
        yield "retry: 2000\n\n"
        while True:
            job.wake.clear()
            while sent < len(job.events):
                kind, data = job.events[sent]
                yield sse(sent, kind, data)
                sent += 1
            if job.finished and sent >= len(job.events):
                return
            try:
                await asyncio.wait_for(job.wake.wait(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
    finally:
        job.watchers -= 1


def create_app(
    models: ModelSet,
    limits: Limits = Limits(),  # noqa: B008 (a frozen dataclass)
    max_pending: int = 100,
    max_per_client: int = 50,
    preload: bool = True,
) -> Starlette:
    scheduler = Scheduler(models, max_pending=max_pending, max_per_client=max_per_client)
    jobs = JobTable()
    page = page_html()

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "models": [models[n].to_dict() for n in models],
                "all": ALL if len(models) > 1 else None,
                "limits": limits.to_dict(),
                "examples": list(EXAMPLES),
            }
        )

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "ok": True,
                "loaded": [n for n in models if models.loaded(n)],
                "pending": scheduler.pending,
                "completed": scheduler.completed,
            }
        )

    async def submit(request: Request) -> Response:
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return _error(413, f"The request is too large (limit {MAX_BODY // 1024} KB).")
        body = await request.body()
        if len(body) > MAX_BODY:
            return _error(413, f"The request is too large (limit {MAX_BODY // 1024} KB).")
        try:
            fields = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "The request body must be a JSON object of form fields.")
        try:
            req = parse_request(fields, models.info, limits)
        except RequestError as e:
            return _error(400, str(e), e.errors)
        job = Job(req, asyncio.get_running_loop())
        try:
            position = scheduler.submit(job, client_key(request))
        except QueueFull as e:
            return _error(503, str(e))
        jobs.add(job)
        return JSONResponse(
            {"id": job.id, "position": position, "models": list(req.models), "events": f"/api/jobs/{job.id}/events"},
            status_code=202,
        )

    async def events(request: Request) -> Response:
        job = jobs.get(request.path_params["job_id"])
        if job is None:
            return _error(404, "This request is unknown or has expired; submit it again.")
        try:  # a reconnecting EventSource says which event it saw last
            start = max(0, int(request.headers.get("last-event-id", "0")))
        except ValueError:
            start = 0
        return StreamingResponse(
            job_events(job, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return _error(500, "The server failed on this request; the details are in its log.")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        scheduler.start(preload=preload)
        yield
        scheduler.stop()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/info", info),
            Route("/healthz", health),
            Route("/api/jobs", submit, methods=["POST"]),
            Route("/api/jobs/{job_id}/events", events),
        ],
        exception_handlers={Exception: server_error},
        lifespan=lifespan,
    )
    app.state.scheduler, app.state.jobs = scheduler, jobs
    return app


# ----------------------------------------------------------------------------- running


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server(app: Starlette, host: str, port: int, log_level: str):
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=3, lifespan="on"
    )
    return uvicorn.Server(config)


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 7860, log_level: str = "warning") -> None:
    """Run until interrupted (Ctrl-C)."""
    _server(app, host, port, log_level).run()


@contextlib.contextmanager
def running_server(app: Starlette, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` from a background thread (port 0: any free one); yields its base URL.

    For tests and benchmarks: the socket is bound before the thread starts, so the URL
    is valid as soon as it is yielded.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = _server(app, host, sock.getsockname()[1], log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fluid-serve-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("the server did not start within 30 s")
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
