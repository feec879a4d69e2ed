"""Finding the primary through Redis Sentinel.

Asked at every connect (command pipeline and pub/sub alike), so a failover is followed
the next time a connection is made; the connection then checks with ROLE that the
server it reached is the primary, since a sentinel may not have heard of a failover yet.
"""

from __future__ import annotations

import dataclasses

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .redis_pipeline import Pipeline
from .redis_url import Endpoint, RedisTarget

ASK_TIMEOUT = 1.0  # s per sentinel: a silent one must not hold up asking the next


class SentinelLocator:
    def __init__(self, target: RedisTarget) -> None:
        self.service = target.service
        self.sentinels = list(target.endpoints)
        # sentinels have their own credentials (or none); TLS is the same as the data nodes'
        self._target = dataclasses.replace(target, username=target.sentinel_username,
                                           password=target.sentinel_password, db=0)

    async def __call__(self) -> Endpoint:
        errors = []
        for sentinel in list(self.sentinels):
            pipeline = Pipeline.fixed(sentinel, self._target, timeout=ASK_TIMEOUT)
            try:
                reply = await pipeline.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            except (TimeoutError, RedisError, OSError) as exc:
                errors.append(f"{sentinel.name}: {exc}")
                continue
            finally:
                await pipeline.close()
            if reply:
                # the one that answered is asked first next time
                self.sentinels.remove(sentinel)
                self.sentinels.insert(0, sentinel)
                return Endpoint(reply[0].decode(), int(reply[1]))
            errors.append(f"{sentinel.name}: does not monitor {self.service!r}")
        raise RedisConnectionError(f"no sentinel names the primary of {self.service!r}: {'; '.join(errors)}")
