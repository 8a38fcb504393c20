"""The relay's PubAck collection (infra.relay.Acks): one future per batch, answers in
publish order, a refusal raised at once, and late answers to an abandoned batch ignored.

Against the shared NATS server, on a stream of the test's own.
"""

import asyncio

import pytest

from infra.relay import Acks
from infra.stream import StreamMoved, ensure_stream
from tests.integration.test_relay_fencing import stream_of_our_own


async def test_answers_come_in_publish_order_with_their_stream_sequences(servers):
    async with stream_of_our_own(servers) as (nc, names):
        await ensure_stream(nc.jetstream(), names)
        acks = Acks(nc, names.stream)
        await acks.begin(5)
        for i in range(5):
            await acks.publish(names.subject("x:A.B"), b"m", {"Nats-Msg-Id": str(i + 1)})
        async with asyncio.timeout(5):
            answers = await acks.answers()
        assert [a.seq for a in answers] == [1, 2, 3, 4, 5]


async def test_a_refused_publish_raises_stream_moved_without_waiting_for_a_timeout(servers):
    async with stream_of_our_own(servers) as (nc, names):
        await ensure_stream(nc.jetstream(), names)
        acks = Acks(nc, names.stream)
        await acks.begin(2)
        subject = names.subject("x:A.B")
        await acks.publish(subject, b"m", {"Nats-Msg-Id": "1", "Nats-Expected-Last-Sequence": "7"})
        await acks.publish(subject, b"m", {"Nats-Msg-Id": "2", "Nats-Expected-Last-Msg-Id": "1"})
        began = asyncio.get_running_loop().time()
        with pytest.raises(StreamMoved, match=names.stream):
            async with asyncio.timeout(5):
                await acks.answers()
        assert asyncio.get_running_loop().time() - began < 2
        assert (await nc.jetstream().stream_info(names.stream)).state.messages == 0


async def test_a_late_answer_to_an_abandoned_batch_does_not_count_for_the_next(servers):
    async with stream_of_our_own(servers) as (nc, names):
        await ensure_stream(nc.jetstream(), names)
        acks = Acks(nc, names.stream)
        subject = names.subject("x:A.B")
        await acks.begin(2)  # abandoned after its first message (NATS went away, say)
        await acks.publish(subject, b"m", {"Nats-Msg-Id": "1"})
        await nc.flush()
        await acks.begin(1)
        # The abandoned batch's answer arrives only now; then a forged one for it too.
        await nc.publish(f"{acks.inbox}.1", b'{"stream":"S","seq":99}')
        await nc.flush()
        await asyncio.sleep(0.1)
        assert acks.batch is not None and not acks.batch.done.done()
        await acks.publish(subject, b"m", {"Nats-Msg-Id": "2"})
        async with asyncio.timeout(5):
            answers = await acks.answers()
        assert [a.seq for a in answers] == [2]
