"""The pure modules must not pull in the network stack."""

from __future__ import annotations

import subprocess
import sys

PURE = ["signaling.core", "signaling.directory", "signaling.inbox", "signaling.protocol", "signaling.auth"]


def test_pure_modules_do_not_import_aiohttp_or_redis():
    code = (
        "import sys\n"
        f"for name in {PURE!r}: __import__(name)\n"
        "print(','.join(sorted(m for m in ('aiohttp', 'redis') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""
