"""The fault scenarios: what breaks, for how long, and what recovery looks like.

Every scenario starts with every book synced and a short warm-up, breaks one
thing for a while (``fault_s``; shorter with ``short``), restores it, and
leaves time to recover. Durations are wall-clock seconds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..local.server import FaultPlan
from ..connection.clock import now_us
from .accounting import DeadInterval
from .faults import DisconnectStorm, GapsAndChecksums, MalformedFlood, SwitchablePlan
from .runner import ScenarioContext


@dataclass
class Scenario:
    name: str
    description: str
    fault_s: float
    short_fault_s: float
    recover_s: float = 8.0
    short_recover_s: float = 4.0
    warmup_s: float = 2.0

    def durations(self, short: bool) -> tuple[float, float]:
        return (self.short_fault_s, self.short_recover_s) if short else (self.fault_s, self.recover_s)

    def plan(self, protocol: str, short: bool) -> FaultPlan | None:
        """The exchange-side fault plan for ``protocol`` (None: the exchange behaves)."""
        return None

    async def run(self, ctx: ScenarioContext) -> None:
        fault_s, recover_s = self.durations(ctx.short)
        await ctx.sleep(self.warmup_s)
        await self.fault(ctx, fault_s)
        await self.recover(ctx, recover_s)

    async def fault(self, ctx: ScenarioContext, seconds: float) -> None:
        await ctx.sleep(seconds)

    async def recover(self, ctx: ScenarioContext, seconds: float) -> None:
        await ctx.sleep(seconds)


class Baseline(Scenario):
    """No fault: the accounting must find every tick stored exactly once."""


class PostgresDown(Scenario):
    async def fault(self, ctx, seconds):
        await asyncio.to_thread(ctx.pg.stop)
        ctx.notes["postgres_stopped_s"] = seconds
        await ctx.sleep(seconds)
        await asyncio.to_thread(ctx.pg.start)
        ctx.notes["postgres_restarted"] = ctx.pg.pid() is not None


class PostgresSlow(Scenario):
    latency_s = 0.25
    bytes_per_s = 128 * 1024

    async def fault(self, ctx, seconds):
        ctx.proxy.slow(self.latency_s, self.bytes_per_s)
        ctx.notes.update(proxy_latency_s=self.latency_s, proxy_bytes_per_s=self.bytes_per_s)
        await ctx.sleep(seconds)
        ctx.proxy.normal()


class RedisDown(Scenario):
    async def fault(self, ctx, seconds):
        await asyncio.to_thread(ctx.redis.stop)
        await ctx.sleep(seconds)
        await asyncio.to_thread(ctx.redis.start)

    async def recover(self, ctx, seconds):
        await ctx.sleep(seconds)
        live = await asyncio.to_thread(ctx.redis_books)
        wanted = {f"{exchange}:{symbol}" for exchange, symbol in ctx.books}
        ctx.notes["redis_books_expected"] = len(wanted)
        ctx.notes["redis_books_restored"] = len(wanted & live)
        ctx.notes["redis_books_missing"] = sorted(wanted - live)


class StreamerSigkill(Scenario):
    dead_s = 2.0

    async def fault(self, ctx, seconds):
        # ``seconds`` of streaming before the kill; the process then stays dead ``dead_s``.
        await ctx.sleep(seconds)
        killed = now_us()
        ctx.streamer.kill9()
        await ctx.sleep(self.dead_s)
        restarted = now_us()
        ctx.streamer.start()
        ctx.dead.append(DeadInterval(killed, restarted))
        ctx.notes["killed_with"] = "SIGKILL"
        ctx.notes["resynced_after_restart"] = await ctx.wait_synced(since_us=restarted)


class _PlanScenario(Scenario):
    """A scenario whose fault is an exchange-side plan switched on for ``fault_s``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.plans: dict[str, SwitchablePlan] = {}

    def make_plan(self, protocol: str, short: bool) -> SwitchablePlan:
        raise NotImplementedError

    def plan(self, protocol, short):
        self.plans[protocol] = self.make_plan(protocol, short)
        return self.plans[protocol]

    async def fault(self, ctx, seconds):
        for plan in self.plans.values():
            plan.active = True
        await ctx.sleep(seconds)
        for plan in self.plans.values():
            plan.active = False
        self.report(ctx)

    def report(self, ctx) -> None:
        pass


class DisconnectStormScenario(_PlanScenario):
    def make_plan(self, protocol, short):
        return DisconnectStorm(interval=1.5 if short else 3.0)

    def report(self, ctx):
        ctx.notes["disconnects_injected"] = {p: plan.disconnects for p, plan in self.plans.items()}


class GapsAndChecksumsScenario(_PlanScenario):
    def make_plan(self, protocol, short):
        return GapsAndChecksums(protocol)

    def report(self, ctx):
        ctx.notes["frames_dropped"] = {p: plan.dropped for p, plan in self.plans.items()}
        ctx.notes["frames_altered"] = {p: plan.altered for p, plan in self.plans.items()}


class MalformedFloodScenario(_PlanScenario):
    def make_plan(self, protocol, short):
        return MalformedFlood(protocol, limit=60 if short else 1000)

    def report(self, ctx):
        ctx.notes["malformed_injected"] = sum(plan.injected for plan in self.plans.values())
        ctx.notes["malformed_by_kind"] = {p: plan.by_kind for p, plan in self.plans.items()}


def all_scenarios() -> dict[str, Scenario]:
    """Fresh scenario objects (they hold per-run plans), by name, in suite order."""
    items = [
        Baseline("baseline", "no fault: every tick stored exactly once", 5, 2),
        PostgresDown("postgres_down", "PostgreSQL stopped mid-stream, then started again", 30, 5, 15, 8),
        PostgresSlow("postgres_slow", "latency and a bandwidth cap between the streamer and PostgreSQL", 20, 5),
        RedisDown("redis_down", "Redis stopped and restarted: live books must come back", 10, 3),
        StreamerSigkill("streamer_sigkill", "the streamer killed with SIGKILL mid-stream and restarted", 5, 3),
        DisconnectStormScenario("disconnect_storm", "the exchanges abort every connection repeatedly", 20, 6),
        GapsAndChecksumsScenario("gaps_and_checksums", "dropped and altered book frames: gaps, checksum failures",
                                 15, 5),
        MalformedFloodScenario("malformed_flood", "a flood of malformed and invalid frames", 15, 5),
    ]
    return {scenario.name: scenario for scenario in items}


SCENARIO_NAMES = tuple(all_scenarios())
