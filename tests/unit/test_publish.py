"""orchestrator.publish: many group sends in one event loop, overlapping, none skipped."""

import asyncio
from unittest import mock

import pytest

from orchestrator import publish


class FakeLayer:
    def __init__(self, fail=()):
        self.sent, self.fail, self.in_flight, self.most_in_flight = [], set(fail), 0, 0

    async def group_send(self, group, message):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0)  # a round trip: others go meanwhile
        self.in_flight -= 1
        if group in self.fail:
            raise ConnectionError(f"lost {group}")
        self.sent.append((group, message))


def test_every_message_is_sent_with_sends_overlapping_up_to_the_bound():
    layer = FakeLayer()
    messages = [(f"node.{i}", {"i": i}) for i in range(100)]
    with mock.patch.object(publish, "get_channel_layer", return_value=layer):
        publish.group_send_many(messages)
    assert sorted(layer.sent, key=lambda m: m[1]["i"]) == messages
    assert 1 < layer.most_in_flight <= publish.CONCURRENCY


def test_a_failed_send_does_not_stop_the_others_and_is_raised_after():
    layer = FakeLayer(fail={"node.3"})
    messages = [(f"node.{i}", {"i": i}) for i in range(10)]
    with mock.patch.object(publish, "get_channel_layer", return_value=layer):
        with pytest.raises(ConnectionError, match=r"lost node\.3"):
            publish.group_send_many(messages)
    assert len(layer.sent) == 9


def test_nothing_to_send_submits_nothing():
    with mock.patch.object(publish, "publishing_loop") as loop:
        publish.group_send_many([])
    loop.assert_not_called()


def test_every_call_runs_on_the_same_loop_so_connections_are_kept():
    layer, loops = FakeLayer(), []

    async def spy(group, message):
        loops.append(asyncio.get_running_loop())
        await FakeLayer.group_send(layer, group, message)

    layer.group_send = spy
    with mock.patch.object(publish, "get_channel_layer", return_value=layer):
        publish.group_send_many([("node.1", {})])
        publish.group_send_many([("node.2", {})])
    assert len(loops) == 2 and loops[0] is loops[1] is publish.publishing_loop()
    assert loops[0].is_running()
