"""The README's configuration reference is generated from signaling/config.py and must match it."""

from __future__ import annotations

import re

from signaling import config
from support import ROOT


def test_readme_reference_matches_the_config_module():
    readme = (ROOT / "README.md").read_text()
    assert config.readme_with_reference(readme) == readme, "run `make docs`"


def test_readme_starts_with_the_two_fresh_machine_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_every_env_variable_in_the_reference_exists():
    readme = (ROOT / "README.md").read_text()
    mentioned = set(re.findall(r"SIGNALING_[A-Z_]+", readme))
    known = {config.env_name(f) for f in config.Settings.__dataclass_fields__}
    assert mentioned <= known, mentioned - known
