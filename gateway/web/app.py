"""The ASGI app of one gateway: middleware, the routers of ``gateway.web``, the pages."""

from importlib import resources

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from gateway import __version__
from gateway.auth import TokenIssuer
from gateway.security import LoginGuard, SecurityHeaders
from gateway.stores.sessions import session_store
from gateway.web import (
    alarms,
    auth,
    cameras,
    consoles,
    devices,
    errors,
    ops,
    org,
    push,
    socket,
)
from gateway.web.deps import WebGateway, WebState
from gateway.web.responses import SafeJSONResponse


def create_app(gw: WebGateway) -> FastAPI:
    """The ASGI app for one gateway."""
    # Swagger UI (/docs) and ReDoc (/redoc) from files shipped in the package, not a CDN: a
    # gateway in a municipal network often has no internet.
    app = FastAPIOffline(
        title="trygg gateway",
        version=__version__,
        description="Staff API of the trygg welfare-technology gateway.",
        # Every JSON answer encodes, whatever a stored string holds (issue 17.6).
        default_response_class=SafeJSONResponse,
    )
    security = gw.settings.security
    state = WebState(
        security=security,
        issuer=TokenIssuer(gw.settings.secret_key, security.access_ttl_s),
        guard=LoginGuard(security),
        claim_guard=LoginGuard(security),
        sessions=session_store(gw.settings.journal_dsn, gw.settings.data_dir,
                               security.refresh_ttl_s),
    )
    app.add_middleware(SecurityHeaders, hsts=security.hsts)
    if security.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=security.cors_origins, allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    errors.install(app)
    app.state.gateway = gw
    for router in (
        auth.router(gw, state),
        alarms.router(gw),
        socket.router(gw),
        org.router(gw, state),
        devices.router(gw, state),
        consoles.router(gw),
        cameras.router(gw),
        push.router(gw),
        ops.router(gw),
        # Kannel's delivery-report and reply callbacks, when the SMS fallback is on.
        *([gw.sms.router] if gw.sms is not None else []),
        *gw.routers,
    ):
        app.include_router(router)

    static = resources.files("dashboards") / "static"
    with resources.as_file(static) as static_dir:
        app.mount("/static", StaticFiles(directory=static_dir), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> RedirectResponse:
            return RedirectResponse("/app/")

        @app.get("/app/", include_in_schema=False)
        async def staff_app() -> FileResponse:
            return FileResponse(static_dir / "index.html")

    return app
