"""The Celery broker transport: kombu's Redis transport, with a channel that closes cleanly
when Redis has gone away.

kombu 5.7's `Channel.close()` first reads the reply of the BRPOP it has pending. When Redis
was killed that read raises a connection error, which ends `close()` before the channel is
marked closed. Celery, handling the lost connection, then drops the connection's settings
and closes the channel a second time; that second close tries to put the unacknowledged
tasks back on their queue, needs the settings it no longer has, and fails with
`AttributeError: 'NoneType' object has no attribute 'hostname'`. That is not a connection
error, so the worker logs "Unrecoverable error" and exits: after a Redis restart, nothing
would reconcile until something restarted the worker. Reproduced with a plain Celery app
on this machine: 11 exits in 30 Redis restarts with kombu's channel, none in 140 with this
one. (tests/integration/test_broker.py; the fault test is
tests/e2e/test_control_plane_faults.py::test_redis_loses_everything.)
"""

from queue import Empty

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def close(self):
        if self._in_poll:
            try:
                self._brpop_read()
            except (Empty, *self.connection_errors):
                pass  # Redis is gone: there is no reply to read, and closing goes on
        super().close()


class Transport(kombu_redis.Transport):
    Channel = Channel
