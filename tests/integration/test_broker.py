"""The broker channel closes cleanly when Redis is gone (config/broker.py)."""

from unittest import mock

import pytest
import redis
from kombu import Connection

from config.broker import Channel, Transport


@pytest.fixture
def channel(settings):
    # The test Redis; the fault (its reply never coming) is injected in the pending read.
    connection = Connection(settings.CELERY_BROKER_URL, transport=Transport)
    chan = connection.default_channel
    assert isinstance(chan, Channel)
    yield chan
    connection.release()


def failing_read(channel, error):
    """The pending BRPOP's read, failing as kombu's does (it ends the poll, then raises)."""

    def read(**options):
        channel._in_poll = None
        raise error

    return mock.patch.object(channel, "_brpop_read", side_effect=read)


def test_closing_while_a_brpop_is_pending_on_a_dead_redis_marks_the_channel_closed(channel):
    channel._in_poll = True
    dead = failing_read(channel, redis.exceptions.ConnectionError("gone"))
    with dead, mock.patch.object(channel.qos, "restore_unacked_once") as restore:
        channel.close()  # kombu's own Channel raised here and stayed open
        assert channel.closed
        restore.assert_called_once()  # unacknowledged tasks are put back, once
        channel.close()  # Celery closes it again: nothing more happens
        restore.assert_called_once()


def test_other_errors_are_not_swallowed(channel):
    channel._in_poll = True
    with failing_read(channel, ValueError("a bug")):
        with pytest.raises(ValueError):
            channel.close()
