"""Fixtures for every test. The private PostgreSQL and Redis themselves come from the
`tests.harness.plugin` plugin (loaded by pyproject's addopts), which starts them before
Django is set up and exports DATABASE_URL, REDIS_URL and friends."""

import pytest

from tests.harness.plugin import SERVICES_KEY, TestServices


@pytest.fixture(scope="session")
def berth_services(request) -> TestServices:
    """The session's private services: `.postgres` (PostgresServer), `.redis` (RedisServer),
    `.root` (the session directory), `.database_url(name)`, `.redis_url(db)`."""
    services = request.config.stash.get(SERVICES_KEY, None)
    if services is None:
        pytest.fail("the Berth test services are not running: run pytest with -p tests.harness.plugin")
    return services
