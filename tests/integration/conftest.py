import psycopg
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from nodes.models import Node
from web.services import do_create_api_token


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("alice", password="a-long-password-1")


@pytest.fixture
def browser(client, user):
    """The dashboard's test client, logged in."""
    client.force_login(user)
    return client


@pytest.fixture
def token(user):
    return do_create_api_token(user, "tests")[1]


@pytest.fixture
def api(token):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def ready_nodes(db):
    def make(*names):
        return [
            Node.objects.create(name=name, status=Node.Status.READY, capacity_cpu=2000, capacity_memory=2**31)
            for name in names
        ]

    return make


@pytest.fixture(autouse=True)
def default_namespace(db):
    """The `default` namespace comes from a data migration; transactional tests flush it."""
    from orchestrator.models import Namespace

    return Namespace.objects.get_or_create(name=Namespace.DEFAULT)[0]


@pytest.fixture(autouse=True)
def no_heartbeat_receivers():
    """No web process runs in these tests: a test that played one (watch_lag) must not make
    the node monitor of the next hold its judgement (nodes/heartbeats.py receivers_silent)."""
    yield
    from nodes import heartbeats

    keys = (
        heartbeats.RECEIVING_KEY,
        heartbeats.RECEIVERS_SEEN_KEY,
        heartbeats.SILENT_SINCE_KEY,
        heartbeats.KNOCKS_KEY,
    )
    heartbeats._client().delete(*keys)


@pytest.fixture
def pg_connect():
    """Opens a connection of its own to the test database (another session, as another
    process would hold): `pg_connect(autocommit=True)`. Closed after the test."""
    opened = []

    def connect(**options):
        db = settings.DATABASES["default"]
        names = {"host": "HOST", "port": "PORT", "dbname": "NAME", "user": "USER", "password": "PASSWORD"}
        opened.append(psycopg.connect(**{key: db[name] for key, name in names.items()}, **options))
        return opened[-1]

    yield connect
    for conn in opened:
        conn.close()
