"""Simulated fleet: how many adapter loads affinity routing saves at a scale this machine cannot run.

1,000 adapters with Zipf popularity, 16 replicas holding 32 adapters each (LRU), Poisson arrivals
at ``--utilization`` of the fleet's capacity. Each request holds one of a replica's
``--concurrency`` places for one time unit, plus ``--load-cost`` units when its adapter had to be
loaded first. Three routers see the same request stream:

* ``affinity``: Ray Serve's multiplexed routing as ray/serve/_private/request_router implements
  it: two random replicas among those holding the adapter, the less busy one; when none holds it
  or those are full, two among the replicas holding the fewest adapters; then any replica. (The
  simulated router sees a load at once; Ray's learns it within about a second.)
* ``round_robin``: the i-th request to replica i mod 16 (a plain load balancer).
* ``least_busy``: Ray's power-of-two choices without a model id (adapter-blind).

    python bench/fleet_sim.py                    # 100,000 requests, a few seconds
    python bench/fleet_sim.py --zipf 0.8 --slots 16

Prints one JSON document: hit rate, loads per 1,000 requests, and the busiest replica's share
against a fair one, per router.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
from collections import OrderedDict


class Replica:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.cache: OrderedDict[int, None] = OrderedDict()
        self.ongoing = 0
        self.served = 0

    def holds(self, adapter: int) -> bool:
        return adapter in self.cache

    def take(self, adapter: int) -> bool:
        """Serve a request for ``adapter``; True when it had to be loaded (LRU eviction when full)."""
        self.served += 1
        self.ongoing += 1
        if adapter in self.cache:
            self.cache.move_to_end(adapter)
            return False
        self.cache[adapter] = None
        if len(self.cache) > self.slots:
            self.cache.popitem(last=False)
        return True


def _less_busy(pool: list[Replica], rng: random.Random) -> Replica:
    pair = rng.sample(pool, 2) if len(pool) > 1 else pool
    return min(pair, key=lambda r: r.ongoing)


def affinity(i: int, adapter: int, replicas: list[Replica], rng: random.Random, limit: int) -> Replica:
    holding = [r for r in replicas if r.holds(adapter) and r.ongoing < limit]
    if holding:
        return _less_busy(holding, rng)
    open_ = [r for r in replicas if r.ongoing < limit] or replicas
    fewest = min(len(r.cache) for r in open_)
    return _less_busy([r for r in open_ if len(r.cache) == fewest], rng)


def round_robin(i: int, adapter: int, replicas: list[Replica], rng: random.Random, limit: int) -> Replica:
    return replicas[i % len(replicas)]


def least_busy(i: int, adapter: int, replicas: list[Replica], rng: random.Random, limit: int) -> Replica:
    return _less_busy(replicas, rng)


def simulate(router, args: argparse.Namespace) -> dict[str, float]:
    rng = random.Random(args.seed)
    weights = [1 / (k + 1) ** args.zipf for k in range(args.adapters)]
    stream = rng.choices(range(args.adapters), weights, k=args.requests)
    rate = args.utilization * args.replicas * args.concurrency  # arrivals per time unit (service = 1 unit)
    replicas = [Replica(args.slots) for _ in range(args.replicas)]
    route_rng = random.Random(args.seed + 1)
    finishing: list[tuple[float, int]] = []  # (time, replica index)
    now, loads = 0.0, 0
    for i, adapter in enumerate(stream):
        now += rng.expovariate(rate)
        while finishing and finishing[0][0] <= now:
            replicas[heapq.heappop(finishing)[1]].ongoing -= 1
        replica = router(i, adapter, replicas, route_rng, args.concurrency)
        loaded = replica.take(adapter)
        loads += loaded
        heapq.heappush(finishing, (now + 1 + (args.load_cost if loaded else 0), replicas.index(replica)))
    fair = args.requests / args.replicas
    return {"hit_rate": round(1 - loads / args.requests, 4),
            "loads_per_1000": round(1000 * loads / args.requests, 1),
            "busiest_replica_share_vs_fair": round(max(r.served for r in replicas) / fair, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32, help="requests a replica runs at once")
    parser.add_argument("--utilization", type=float, default=0.7)
    parser.add_argument("--load-cost", type=float, default=0.5, help="time units an adapter load adds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = {name: simulate(router, args) for name, router in
               (("affinity", affinity), ("round_robin", round_robin), ("least_busy", least_busy))}
    results["loads_ratio_affinity_to_round_robin"] = round(
        results["affinity"]["loads_per_1000"] / results["round_robin"]["loads_per_1000"], 3)
    print(json.dumps({"settings": vars(args), **results}, indent=1))


if __name__ == "__main__":
    main()
