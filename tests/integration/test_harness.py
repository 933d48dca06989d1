"""The harness gives every test session its own PostgreSQL and Redis, never a developer's."""

import os
from urllib.parse import urlparse

import psycopg
import redis
from django.conf import settings


def test_database_is_the_sessions_private_cluster(berth_services):
    url = os.environ["DATABASE_URL"]
    assert urlparse(url).port == berth_services.postgres.port
    with psycopg.connect(url, connect_timeout=5) as conn:
        data_directory = conn.execute("SHOW data_directory").fetchone()[0]
        fsync = conn.execute("SHOW fsync").fetchone()[0]
    assert data_directory.startswith(f"{berth_services.root}/")
    assert fsync == "off"


def test_redis_is_the_sessions_private_server(berth_services):
    client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
    assert client.ping()
    assert client.config_get("dir")["dir"].startswith(f"{berth_services.root}/")
    assert client.config_get("save")["save"] == ""


def test_settings_point_at_the_private_services(berth_services):
    assert settings.DATABASES["default"]["PORT"] == berth_services.postgres.port
    assert settings.CELERY_BROKER_URL == berth_services.redis_url(0)
    assert str(settings.DATA_DIR).startswith(f"{berth_services.root}/")
    assert settings.NODE_GRACE_SECONDS == 6
    assert settings.AGENT_HEARTBEAT_SECONDS == 1
