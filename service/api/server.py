"""The gRPC server: request validation, the servicer, health, reflection, model hot-swap.

``build_server`` returns a started server (its port, a ``stop``) so tests bind port 0 and
talk to a real server; ``__main__`` only adds signals and settings around it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from omnirec.v1 import campaigns_pb2 as cpb
from omnirec.v1 import campaigns_pb2_grpc as cpb_grpc
from omnirec.v1 import engagement_pb2 as epb
from omnirec.v1 import engagement_pb2_grpc as epb_grpc
from omnirec.v1 import profiles_pb2 as ppb
from omnirec.v1 import profiles_pb2_grpc as ppb_grpc
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.api.campaigns import CampaignsService
from service.api.engagement import EngagementService
from service.api.interceptors import Guard, Measure
from service.api.profiles import ProfilesService
from service.api.recommender import RecommenderService
from service.api.security import ServerSecurity, server_security
from service.config import Settings, identity_secret
from service.errors import (
    ConfigError,
)
from service.experiments import Arm, Experiments
from service.identity import Identities
from service.recommender import (
    ServingParams,
)
from service.registry import ServedModel
from service.served_model import ModelHolder
from service.store import FeatureStore
from service.store.plans import AsyncReader

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Recommender"].full_name,
    epb.DESCRIPTOR.services_by_name["Engagement"].full_name,
    ppb.DESCRIPTOR.services_by_name["Profiles"].full_name,
    cpb.DESCRIPTOR.services_by_name["Campaigns"].full_name,
)


# --- building and running -------------------------------------------------------------


class Supervisor:
    """Background upkeep on the server's loop: health follows Redis, and the model follows
    its alias (registry calls and model loads run on a worker thread)."""

    HEALTH_EVERY_SECONDS = 1.0

    def __init__(
        self,
        settings: Settings,
        health_servicer: health.aio.HealthServicer,
        reader: AsyncReader,
        models: ModelHolder,
        reload_model: Callable[[str], ServedModel] | None,
        current_version: Callable[[], str | None] | None,
    ) -> None:
        self.settings = settings
        self.health = health_servicer
        self.reader = reader
        self.models = models
        self.reload_model = reload_model
        self.current_version = current_version
        self._serving: bool | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check_health()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check_health(self) -> bool:
        ok = await self.reader.ping()
        if ok != self._serving:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", *SERVICE_NAMES):
                await self.health.set(name, status)
            if ok:
                log.info("Redis reachable: SERVING")
            else:
                log.warning("Redis unreachable: NOT_SERVING until it is back")
            self._serving = ok
        return ok

    async def check_model(self) -> None:
        if self.reload_model is None or self.current_version is None:
            return
        try:
            version = await asyncio.to_thread(self.current_version)
            if version is not None and version != self.models.engine.model.version:
                model = await asyncio.to_thread(self.reload_model, version)
                await asyncio.to_thread(self.models.swap, model)
            elif self.models.experiments.experiments:
                # Arms on an alias follow it as the default follows its own.
                await asyncio.to_thread(self.models.refresh_arms)
        except Exception:
            # The registry may be briefly unreachable; keep serving the loaded model.
            log.exception("checking the model alias failed; still serving the loaded model")

    async def _run(self) -> None:
        poll = self.settings.model_poll_seconds
        waited = 0.0
        while True:
            await asyncio.sleep(self.HEALTH_EVERY_SECONDS)
            await self.check_health()
            waited += self.HEALTH_EVERY_SECONDS
            if poll and waited >= poll:
                waited = 0.0
                await self.check_model()


@dataclass
class RunningServer:
    """A server answering on its own thread's asyncio loop; stop it from any thread."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    supervisor: Supervisor
    models: ModelHolder
    reader: AsyncReader
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    stopped: asyncio.Event

    def stop(self, grace: float | None, drain: float = 0.0) -> None:
        """SIGTERM order: NOT_SERVING → keep answering for ``drain`` seconds (load
        balancers see the health change and stop sending) → refuse new calls and finish
        in-flight ones within ``grace`` → stop upkeep."""
        if not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(grace, drain), self.loop).result()
        self.thread.join(timeout=30)

    async def _stop(self, grace: float | None, drain: float) -> None:
        await self.health.enter_graceful_shutdown()
        if drain > 0:
            await asyncio.sleep(drain)
        await self.server.stop(grace)
        await self.supervisor.stop()
        await self.reader.close()
        self.stopped.set()


def build_server(
    settings: Settings,
    model: ServedModel,
    store: FeatureStore,
    *,
    reload_model: Callable[[str], ServedModel] | None = None,
    current_version: Callable[[], str | None] | None = None,
    address: str | None = None,
    reuse_port: bool = False,
    security: ServerSecurity | None = None,
    version_of: Callable[[str], str | None] | None = None,
) -> RunningServer:
    """Start a gRPC server on ``address`` (default ``host:port`` from settings).

    The server is ``grpc.aio`` on an asyncio loop in a thread of its own, reading Redis
    with the asyncio client: no thread hand-off per call, and concurrent calls share
    round trips (:class:`~service.features.AsyncReader`). ``reload_model`` /
    ``current_version`` let the server follow the alias; leave them out to serve
    ``model`` for good. ``reuse_port`` lets several processes share the port.
    ``security`` (keys, TLS, bind address) defaults to what the settings say.
    ``version_of`` (alias → version) lets experiment arms name aliases.
    """
    security = security or server_security(settings)
    experiments = (
        Experiments.load(settings.experiments_file, identity_secret(settings))
        if settings.experiments_file
        else None
    )

    def load_arm(arm: Arm) -> ServedModel:
        version = arm.model_version
        if version is None and arm.model_alias is not None:
            version = version_of(arm.model_alias) if version_of is not None else None
            if version is None:
                raise ConfigError(
                    f"experiment arm {arm.name!r}: alias {arm.model_alias!r} names no version"
                )
        if reload_model is None or version is None:
            raise ConfigError(f"experiment arm {arm.name!r}: its model cannot be loaded here")
        return reload_model(version)

    # Arm models load here, before the loop runs: a bad arm stops the start with one line.
    models = ModelHolder(
        model,
        ServingParams.of(settings),
        experiments,
        load_arm,
    )
    ready: concurrent.futures.Future[RunningServer] = concurrent.futures.Future()
    loop = asyncio.new_event_loop()

    async def main() -> None:
        try:
            running = await _start(
                settings,
                models,
                store,
                reload_model,
                current_version,
                address,
                reuse_port,
                security,
            )
        except BaseException as exc:  # reported to the caller of build_server
            ready.set_exception(exc)
            return
        ready.set_result(running)
        await running.stopped.wait()

    def run() -> None:
        asyncio.set_event_loop(loop)
        # The worker threads of the rare blocking work: catalogue reloads, identity
        # links and erasures, catalogue writes, model reloads.
        loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="omnirec")
        )
        try:
            loop.run_until_complete(main())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="omnirec-grpc", daemon=True)
    thread.start()
    running = ready.result()
    running.thread = thread
    log.info("omnirec serving %s on port %d: %s", model.label, running.port, security.summary)
    return running


async def _start(
    settings: Settings,
    models: ModelHolder,
    store: FeatureStore,
    reload_model: Callable[[str], ServedModel] | None,
    current_version: Callable[[], str | None] | None,
    address: str | None,
    reuse_port: bool,
    security: ServerSecurity,
) -> RunningServer:
    server = grpc.aio.server(
        interceptors=[Measure(), Guard(security.keys, settings.max_concurrent_calls)],
        options=[
            # Off unless asked: a second server on a busy port must fail, not share it.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", settings.max_request_bytes),
        ],
    )
    reader = store.async_reader()
    identities = Identities(store, identity_secret(settings))
    recommender = RecommenderService(settings, models, store, identities, reader)
    pb_grpc.add_RecommenderServicer_to_server(recommender, server)
    epb_grpc.add_EngagementServicer_to_server(
        EngagementService(settings, models, identities, reader), server
    )
    ppb_grpc.add_ProfilesServicer_to_server(
        ProfilesService(settings, models, store, identities, reader), server
    )
    # Shares the Recommender's catalogue copy: one reload per catalogue change.
    cpb_grpc.add_CampaignsServicer_to_server(
        CampaignsService(settings, models, identities, reader, recommender.catalogue), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    where = address or f"{security.host}:{settings.port}"
    try:
        if security.credentials is None:
            port = server.add_insecure_port(where)
        else:
            port = server.add_secure_port(where, security.credentials)
    except RuntimeError as exc:  # grpc.aio raises where the sync server returned 0
        raise OSError(f"cannot bind {where}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot bind {where}")
    supervisor = Supervisor(
        settings, health_servicer, reader, models, reload_model, current_version
    )
    await server.start()
    await supervisor.start()
    return RunningServer(
        server,
        port,
        health_servicer,
        supervisor,
        models,
        reader,
        asyncio.get_running_loop(),
        threading.current_thread(),
        asyncio.Event(),
    )
