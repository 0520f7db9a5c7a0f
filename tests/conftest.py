"""Shared pytest set-up: fixtures from tests/ helper modules (tests/ is on sys.path under pytest's rootdir)."""

from hub_server import hub_server  # noqa: F401  (the local Hub fixture)
