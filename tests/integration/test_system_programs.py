"""The system programs the suite relies on are installed (.ci/run installs them).

Later suites start redis-server, nginx and chromium for real; in CI their absence
must fail loudly here rather than skip anything.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest


@pytest.mark.parametrize(("program", "version_flag"), [("redis-server", "--version"), ("nginx", "-v"),
                                                       ("chromium", "--version")])
def test_program_is_installed_and_runs(program, version_flag):
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert path, f"{program} is not installed: run .ci/run (or apt-get install {program})"
    result = subprocess.run([path, version_flag], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
