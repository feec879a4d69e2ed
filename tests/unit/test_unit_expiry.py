"""One timer for every connection's token expiry."""

from __future__ import annotations

import asyncio
import gc

from signaling.expiry import Expiries


class Conn:
    def __init__(self, name: str) -> None:
        self.name, self.ended = name, False


async def test_items_expire_in_deadline_order_on_time_and_ended_ones_never():
    loop = asyncio.get_running_loop()
    expired: list[str] = []
    ex: Expiries[Conn] = Expiries(lambda c: expired.append(c.name), loop.time)
    now = loop.time()
    conns = {n: Conn(n) for n in "abcd"}
    for name, delay in (("c", 0.15), ("a", 0.05), ("b", 0.10), ("d", 0.12)):
        ex.add(conns[name], now + delay)
    conns["d"].ended = True
    ex.forget(conns["d"])
    await asyncio.sleep(0.08)
    assert expired == ["a"]
    await asyncio.sleep(0.12)
    assert expired == ["a", "b", "c"] and len(ex) == 0
    ex.close()


async def test_forgotten_entries_are_compacted_and_the_dead_do_not_linger():
    loop = asyncio.get_running_loop()
    ex: Expiries[Conn] = Expiries(lambda c: None, loop.time)
    keep = [Conn(f"k{i}") for i in range(10)]
    for c in keep:
        ex.add(c, loop.time() + 3600)
    for i in range(1000):  # a churn of short connections with hour-long tokens
        c = Conn(f"c{i}")
        ex.add(c, loop.time() + 3600)
        c.ended = True
        ex.forget(c)
        del c
    gc.collect()
    assert len(ex._heap) < 200  # bounded by the live ones, not by the churn
    assert {e[2]().name for e in ex._heap if e[2]() is not None and not e[2]().ended} == {c.name for c in keep}
    ex.close()


async def test_a_connection_that_ends_after_its_token_expired_is_not_counted_twice():
    # its entry left the heap when it expired: forgetting it afterwards must not count a
    # forgotten entry that is not there (len() went negative: a ValueError)
    loop = asyncio.get_running_loop()
    expired: list[Conn] = []
    ex: Expiries[Conn] = Expiries(expired.append, loop.time)
    conns = [Conn(f"c{i}") for i in range(3)]
    for c in conns:
        ex.add(c, loop.time() + 0.01)
    await asyncio.sleep(0.05)
    assert expired == conns and len(ex) == 0
    for c in conns:
        c.ended = True
        ex.forget(c)  # the session ends after its token expired
    assert len(ex) == 0 and ex._forgotten == 0
    later = Conn("later")
    ex.add(later, loop.time() + 3600)
    assert len(ex) == 1
    ex.close()
