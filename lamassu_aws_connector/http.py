"""Operations endpoint: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics`` (Prometheus)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .config import HttpConfig
from .logs import get_logger
from .metrics import Metrics

log = get_logger(__name__)

ReadinessProbe = Callable[[], dict[str, bool]]


class OpsServer:
    def __init__(
        self,
        config: HttpConfig,
        metrics: Metrics,
        readiness: ReadinessProbe,
        routes: Iterable[web.RouteDef] = (),
    ) -> None:
        self._routes = list(routes)
        self._config = config
        self._metrics = metrics
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self.port = config.port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        app.add_routes(self._routes)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._config.host, self._config.port)
        await site.start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        log.info("http.started", host=self._config.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        # Answering at all proves the event loop is responsive.
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        checks = self._readiness()
        down = sorted(name for name, ok in checks.items() if not ok)
        body = {"status": "ready" if not down else "not ready", "checks": checks, "down": down}
        return web.json_response(body, status=200 if not down else 503)

    async def _metrics_page(self, _: web.Request) -> web.Response:
        payload = generate_latest(self._metrics.registry)
        response = web.Response(body=payload)
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response
