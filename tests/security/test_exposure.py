"""Safe defaults when exposed, and secrets kept out of logs (issue 11, cases 7 and the
Redis URL). Real node processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import redis

from support import ROOT, RedisServer, free_port

PASSWORD = "n0t-in-any-log-9f2c"


def serve(*args: str, env: dict[str, str] | None = None, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "signaling", "serve", "--port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_a_node_without_a_key_refuses_to_listen_on_a_public_address():
    result = serve("--host", "0.0.0.0")
    assert result.returncode != 0
    assert "--open" in result.stderr and "SIGNALING_JWT_SECRET_FILE" in result.stderr, result.stderr


async def test_the_redis_password_reaches_no_log_line(processes, tmp_path):
    server = RedisServer().start()
    try:
        redis.Redis(port=server.port).config_set("requirepass", PASSWORD)
        url_file = tmp_path / "redis-url"
        url_file.write_text(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0\n")
        node = processes("--redis-url-file", str(url_file))
        await node.wait_ready()  # it reached Redis with the password from the file
        wrong = processes("--redis-url", f"redis://:{PASSWORD}x@127.0.0.1:{server.port}/0", "--log-level", "debug")
        await asyncio.sleep(2)  # it tries, and logs why it cannot
        node.stop()
        wrong.stop()
        for proc in (node, wrong):
            assert PASSWORD not in proc.log(), proc.log()
        assert "redis://:***@127.0.0.1" in node.log()
    finally:
        server.stop()
