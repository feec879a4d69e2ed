"""A seeded, replayable randomized fault schedule against the deployed topology.

Three `signaling serve` nodes behind nginx (LocalCluster), one real redis-server that
each node reaches through a TCP proxy of its own, and sixteen app-like clients
connected through nginx: eight pairs sending each other numbered messages with
receipts, and two rooms of four where three members broadcast numbered messages. The
clients reconnect with `resume` like a good app and never send a message twice.

Meanwhile faults drawn from a seeded RNG hit the cluster, one at a time or overlapping a
little, each healed: a node SIGKILLed (and started again), SIGSTOPped for longer than
--node-ttl (its clients stay, leave through nginx, or half of each), drained
(SIGTERM, started again); Redis restarted empty; one node's Redis link reset or
black-holed for a few seconds; client sockets aborted.

Then everything is healed, the test waits (on conditions, with timeouts) until every
node is ready, every client connected and every acked message delivered, and checks:
every acked message processed exactly once by each recipient (room: every member)
unless that recipient was later told `resumed: false`; nothing processed twice (by
sender + number, and by seq); each sender's numbers in order at each recipient; no
`peer-left`/late `peer-joined` (but for a member that rejoins after a `resumed: false`,
as our clients do when Redis lost its data), no `peer-unavailable`; every node /readyz
200. A
failure prints each violation (sender, recipient, numbers, seqs, times), the
recipients' connections, the fault log and the node log lines around the first
violation of each kind; the node logs stay in the test's tmp_path (`cluster/`).

The seed is printed first (`fault seed N`); the schedule length defaults to 60 s.
Replay a seed, or run the long version:

    SIGNALING_FAULT_SEED=7 .venv/bin/pytest tests/integration/test_fault_schedule.py -s
    SIGNALING_FAULT_SECONDS=600 SIGNALING_FAULT_SEED=7 .venv/bin/pytest tests/integration/test_fault_schedule.py -s

(A replay draws the same faults, targets and timings; who is on which node when a fault
hits depends on the run, so the same seed can show different violations.) pytest keeps
only the last few runs' tmp_path: add `--basetemp=/tmp/fault-7` to keep the node logs
(`/tmp/fault-7/test_*/cluster/node-N.log`, `redis.log`, `nginx/`).
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from fault_support import (
    ACK_TIMEOUT,
    CLOCK,
    NODE_ARGS,
    FaultCluster,
    FaultInjector,
    Traffic,
    Violation,
    check,
    diagnostic,
    fault_seconds,
    fault_seed,
    peers_state,
    print_flush,
    readyz,
    tails_missing,
    wait_until,
)

SECONDS = fault_seconds()
HARD_MARGIN = 50.0  # start-up, the last faults healing, quiescence and the checks


@pytest.mark.slow
@pytest.mark.timeout(int(SECONDS + HARD_MARGIN + 20))
async def test_randomized_faults_lose_duplicate_and_reorder_nothing(tmp_path):
    seed, seconds = fault_seed(), SECONDS
    print_flush(f"fault seed {seed}")
    CLOCK.reset()
    cluster = FaultCluster(3, workdir=tmp_path / "cluster", node_args=NODE_ARGS)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
    traffic = Traffic(cluster.endpoint, http, seed)
    injector = FaultInjector(cluster, traffic, seed)
    logs = {}
    try:
        try:
            report, text = await asyncio.wait_for(_scenario(cluster, http, traffic, injector, seed, seconds, logs),
                                                  seconds + HARD_MARGIN)
        except TimeoutError:
            report = None
        if report is None:
            pytest.fail(f"fault test seed={seed} overran its {seconds + HARD_MARGIN:.0f}s bound; clients:\n"
                        f"{peers_state(traffic)}\nfault log:\n{injector.describe_log()}\n"
                        f"node logs in {cluster.workdir}", pytrace=False)
        print_flush(report.summary())
        if report.failed:  # the violations, the fault log and the node log lines around them
            pytest.fail(f"{report.summary()}\n{text}", pytrace=False)
        print_flush(f"fault log:\n{injector.describe_log()}")
    finally:
        injector.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(traffic.close(), 10)
        await cluster.stop()
        await http.close()


async def _scenario(cluster: FaultCluster, http: aiohttp.ClientSession, traffic: Traffic, injector: FaultInjector,
                    seed: int, seconds: float, logs: dict):
    await cluster.start()
    logs.update({n.node_id: n.log_path for n in cluster.nodes})
    print_flush(f"cluster {cluster.pids()} nginx {cluster.endpoint}; logs in {cluster.workdir}")
    await traffic.setup()
    print_flush(f"{len(traffic.peers)} peers on {sorted({p.node for p in traffic.peers})}, "
                f"{len(traffic.streams)} senders; faults for {seconds:g}s")
    traffic.start()
    await injector.run(seconds)
    extra: list[Violation] = []
    try:
        healed = await cluster.heal_all()  # each fault heals itself: anything here is in the log
    except Exception as exc:  # noqa: BLE001 - e.g. a node that does not start again
        healed = [f"FAILED: {exc!r}"]
        extra.append(Violation("fault", CLOCK.now(), f"healing everything at the end failed: {exc!r}"))
    if healed:
        injector.note(0, f"left unhealed by a fault, healed at the end: {healed}")
    injector.note(0, "schedule over; senders stop")
    await traffic.finish(timeout=ACK_TIMEOUT + 5)

    for what, predicate, timeout, diagnose in (
        ("every node /readyz 200", lambda: _all_ready(cluster, http), 20.0,
         lambda: readyz(cluster, http)),
        ("every client connected", lambda: all(p.node for p in traffic.peers), 15.0,
         lambda: "\n" + peers_state(traffic)),
        ("every acked message processed (or excused)", lambda: not tails_missing(traffic), 10.0,
         lambda: f"{len(tails_missing(traffic))} (stream, number, recipient) missing"),
    ):
        failed = await wait_until(what, predicate, timeout, diagnose)
        if failed is not None:
            extra.append(failed)
    injector.note(0, "quiescent: every node ready, every client connected, every acked message processed"
                  if not extra else "quiescence not reached")
    final = await readyz(cluster, http)
    for node_id, code in final.items():
        if code != 200:
            extra.append(Violation("readyz", None, f"{node_id} /readyz answered {code} at the end"))
    report = check(traffic, injector, seed, seconds, extra)
    return report, diagnostic(report, traffic, injector, logs)


async def _all_ready(cluster: FaultCluster, http: aiohttp.ClientSession) -> bool:
    return all(code == 200 for code in (await readyz(cluster, http)).values())
