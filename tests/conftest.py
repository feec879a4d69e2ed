"""Shared fixtures. Servers the tests need are real programs; a missing one fails, never skips."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
