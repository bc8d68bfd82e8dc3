"""Wiring of one ingress replica, in one function: typed arguments in, its parts out.

`compose(args, handles, platform)` builds the policy's price book, the live cluster
state, admission, the meter sink, the billing view, the settlement, the chat service
and the read-only views. What it needs of Ray (the load registry, the Serve controller,
Ray metrics, the aggregator actors) comes in as a `Platform`, so a unit test builds the
whole ingress without Ray; `ray_platform()` is the real one. The environment is not
read here: the builder reads `Settings` once and passes what is needed in `IngressArgs`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from serve_app.admission import AdmissionGate, RedisAdmission
from serve_app.admission.gate import DEFAULT_TIMEOUT_S
from serve_app.admission.lifetime import reservation_ttl_s
from serve_app.cluster.reports import ReplicaReport, of_app
from serve_app.cluster.serve_adapter import DeploymentInfo
from serve_app.cluster.snapshot import Scaling
from serve_app.cluster.state import ClusterState
from serve_app.ingress.figures import LiveFigures
from serve_app.ingress.history import OutputHistory
from serve_app.ingress.margins import MarginWindows
from serve_app.ingress.policy_view import PolicyView
from serve_app.ingress.reload import RELOAD_PERIOD_S, PolicyReloader
from serve_app.ingress.service import ChatService, ModelHandle
from serve_app.ingress.settlement import Settlement
from serve_app.ingress.tally import RedisTallyStore
from serve_app.ingress.traces import TracedGate, TracedSink, traced_handles
from serve_app.ingress.views import Views
from serve_app.metering.aggregator import AggregatorConfig, stripe_sink_for
from serve_app.metering.meter import MemorySink, MeterSink
from serve_app.metering.stream import MeterStreamWriter
from serve_app.metering.stripe_sink import StripeSink
from serve_app.metering.view import BillingView
from serve_app.models.direct import DirectModels
from serve_app.policy import LoadedPolicy, load_policy_dict
from serve_app.pricing import ClusterSnapshot
from serve_app.redis_client import redis_client
from serve_app.telemetry import Metrics, tracing

logger = logging.getLogger("rtcts.ingress")

REDIS_CONNECTIONS = 64
"""Redis connections per ingress replica (admission and billing views)."""


class BillingArgs(BaseModel):
    """Where meters go and how the aggregators bill them (set when Redis is configured)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: str = Field(default=".rtcts", description="The meter spool lives under it.")
    meter_shards: int = Field(default=1, ge=1, le=64, description="Meter streams.")
    window_s: int = Field(default=60, ge=1, description="Billing window length, seconds.")
    grace_s: int = Field(default=10, ge=0, description="Seconds a window stays open after it.")
    stripe_api_base: str | None = Field(
        default=None, description="A Stripe-compatible server; None: Stripe itself (with a key)."
    )
    stripe_api_key: SecretStr | None = Field(
        default=None, description="Stripe key (STRIPE_API_KEY, read once by the builder)."
    )
    stripe_mode: str = Field(default="v1", pattern="^v[12]$", description="v1 or v2 meter events.")

    def stripe_key(self) -> str | None:
        return None if self.stripe_api_key is None else self.stripe_api_key.get_secret_value()


class IngressArgs(BaseModel):
    """Everything one ingress replica is built from (bound by `build_app`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: dict[str, Any] = Field(description="The validated policy, as a dict.")
    policy_source: str = Field(default="<policy>", description="Where the policy came from.")
    app_name: str = Field(default="rtcts", description="The Serve application's name.")
    redis_url: SecretStr | None = Field(
        default=None, description="Redis for admission and meters; None: neither."
    )
    redis_timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S, gt=0, description="Longest wait on Redis per request."
    )
    billing: BillingArgs | None = Field(default=None, description="None: meters stay in memory.")
    policy_path: str | None = Field(
        default=None,
        description="The policy file, watched for changes (hot reload) when the replica "
        "can read it; None: the policy given is final.",
    )
    ingress_replicas: int = Field(
        default=1,
        ge=1,
        description="Ingress replicas: each weighs its revenue against this share of the "
        "models' replica-hours in the margin window.",
    )


@dataclass(frozen=True)
class Platform:
    """What the ingress needs from Ray, injected (fakes in unit tests)."""

    fetch_reports: Callable[[], Awaitable[list[ReplicaReport]]]
    fetch_deployments: Callable[[], Awaitable[dict[str, DeploymentInfo]]]
    metrics: Metrics
    start_aggregators: Callable[[AggregatorConfig], object]
    clock: Callable[[], float] = time.time
    replica_id: str = "ingress"
    """This ingress replica's id (names the upstreams it calls itself)."""


def ray_platform(app_name: str) -> Platform:
    """The real platform: the load registry actor, the Serve controller, Ray metrics and
    the detached aggregator actors."""
    from ray import serve

    from serve_app.cluster.registry import get_or_create_registry
    from serve_app.cluster.serve_adapter import ServeControllerAdapter
    from serve_app.metering.aggregator import ensure_aggregators
    from serve_app.settings import otel_environment
    from serve_app.telemetry import RayMetrics, configure_tracing

    configure_tracing(otel_environment())  # OTLP export when the OTel variables ask for it
    registry = get_or_create_registry()
    context = serve.get_replica_context()
    own_app = context.app_name

    async def fetch_reports() -> list[ReplicaReport]:
        reports: list[ReplicaReport] = await registry.snapshot.remote()
        return of_app(reports, own_app)

    return Platform(
        fetch_reports,
        ServeControllerAdapter(app_name).deployments,
        RayMetrics(),
        ensure_aggregators,
        replica_id=context.replica_id.unique_id,
    )


@dataclass
class IngressParts:
    """One ingress replica's parts. `start()` on the serving loop, `stop()` at shutdown."""

    service: ChatService
    views: Views
    state: ClusterState
    sink: MeterSink
    """Where meters go: the stream writer with Redis, else an in-memory sink."""
    writer: MeterStreamWriter | None
    billing: BillingArgs | None
    reloader: PolicyReloader | None = None
    figures: LiveFigures | None = None
    """The dashboard's live figures (`figures.py`), also the metrics the request path uses."""
    direct: DirectModels = field(default_factory=lambda: DirectModels({}))
    """The upstreams this replica calls itself (`dispatch: ingress`)."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.direct.start()
        self.state.start()
        if self.writer is not None:
            self.writer.start()
        if self.reloader is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._watch()))

    async def _watch(self) -> None:
        assert self.reloader is not None
        while True:
            await asyncio.sleep(RELOAD_PERIOD_S)
            try:
                self.reloader.check()
            except Exception:  # a reload bug must not stop the watch (or the replica)
                logger.exception("policy reload check failed")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.state.stop()
        await self.direct.stop()
        if self.writer is not None:
            await self.writer.stop()  # flushes every buffered meter (or spools it)

    def stripe_sink(self) -> StripeSink:
        """A sink on the configured Stripe, for an admin reconcile (close it after use)."""
        billing = self.billing or BillingArgs()
        return stripe_sink_for(billing.stripe_api_base, billing.stripe_key())


def compose(
    args: IngressArgs, handles: Mapping[str, ModelHandle], platform: Platform
) -> IngressParts:
    """Build one ingress replica from its arguments (nothing started: `parts.start()`)."""
    loaded = load_policy_dict(args.policy, source=args.policy_source)
    view = PolicyView.of(loaded)
    book = view.book
    traced = tracing()  # the spans of `traces.py`, only where a tracer provider is set
    figures = LiveFigures(platform.metrics, share=1 / args.ingress_replicas, clock=platform.clock)
    metrics: Metrics = figures  # counted for the dashboard, then passed on to `platform.metrics`
    windows = MarginWindows(
        {m.id: m.usd_per_s for m in book.models.values()}, share=1 / args.ingress_replicas
    )

    def on_replicas(snapshot: ClusterSnapshot) -> None:
        metrics.live_state(snapshot)
        windows.replicas(snapshot)

    # Upstreams called from here: their reports and listing join the registry's and the
    # controller's, and their handles the deployments' (`models/direct.py`).
    direct = DirectModels.of(loaded.policy.models, platform.replica_id)
    deployed = len(direct.models) < len(loaded.policy.models)

    async def fetch_reports() -> list[ReplicaReport]:
        # Only model deployments report to the registry: with none, nothing to ask it
        # (10 actor calls a second, idle or not).
        return direct.reports(await platform.fetch_reports() if deployed else [])

    async def fetch_deployments() -> dict[str, DeploymentInfo]:
        return direct.deployments(await platform.fetch_deployments())

    handles = {**handles, **direct.handles()}

    state = ClusterState(
        {
            m.id: Scaling(
                m.cold_start_s,
                m.autoscaling.target_ongoing_requests,
                m.autoscaling.min_replicas,
                m.autoscaling.max_replicas,
            )
            for m in loaded.policy.models
        },
        fetch_reports,
        fetch_deployments,
        clock=platform.clock,
        on_replicas=on_replicas,
    )
    admission: AdmissionGate | None = None
    billing_view: BillingView | None = None
    writer: MeterStreamWriter | None = None
    sink: MeterSink = MemorySink()
    if args.redis_url is not None:
        redis_url = args.redis_url.get_secret_value()
        # A blocking pool: under a burst, requests wait for a free connection (within
        # the gate's time bound) instead of failing with "too many connections", which
        # would look like an outage. A Redis Cluster URL gets a cluster client.
        client = redis_client(
            redis_url,
            timeout_s=args.redis_timeout_s,
            max_connections=REDIS_CONNECTIONS,
            blocking=True,
        )
        # Reservations outlive the longest generation the policy allows.
        store = RedisAdmission(client, reservation_ttl_s=reservation_ttl_s(loaded.policy))
        admission = (TracedGate if traced else AdmissionGate)(store, timeout_s=args.redis_timeout_s)
        figures.tally.store = RedisTallyStore(client, args.app_name)  # every replica's counts
        if args.billing is not None:
            billing = args.billing
            # Verified meters go to the Redis stream (spooled to disk while Redis is down);
            # the aggregator actors that read it are created once, detached.
            writer = MeterStreamWriter.from_url(
                redis_url, Path(billing.data_dir) / "spool", shards=billing.meter_shards
            )
            sink = writer
            billing_view = BillingView(
                client, billing.meter_shards, window_s=billing.window_s, grace_s=billing.grace_s
            )
            platform.start_aggregators(
                AggregatorConfig(
                    redis_url=redis_url,
                    instance=args.app_name,
                    shards=billing.meter_shards,
                    window_s=billing.window_s,
                    grace_s=billing.grace_s,
                    stripe_api_base=billing.stripe_api_base,
                    stripe_api_key=billing.stripe_key(),
                    stripe_mode=billing.stripe_mode,
                    customers=tuple((t.stripe_customer_id, t.id) for t in loaded.policy.tenants),
                )
            )
    settled: MeterSink = TracedSink(sink) if traced else sink
    if traced:
        handles = traced_handles(handles)
    history = OutputHistory()
    settlement = Settlement(settled, metrics, history, admission, windows)
    service = ChatService(view, state, handles, settlement, history, metrics, admission, windows)
    views = Views(loaded, book, state, view.limits, admission, billing_view)

    def apply(new: LoadedPolicy) -> None:
        """A reloaded policy: new requests decide on it (model deployments unchanged)."""
        new_view = PolicyView.of(new)
        service.swap(new_view)
        views.swap(new_view)

    reloader = None
    if args.policy_path is not None and Path(args.policy_path).is_file():
        reloader = PolicyReloader(Path(args.policy_path), loaded, apply)
    figures.bind(lambda: views.book, state, billing_view)
    return IngressParts(
        service, views, state, sink, writer, args.billing, reloader, figures, direct
    )
