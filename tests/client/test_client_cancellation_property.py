"""Property: however requests are cancelled, the client's books stay exact.

Random mixes of helpers run concurrently against the fake server, which answers after
random delays and, at random, answers a flushed request before its Rflush. Some tasks
are cancelled at random moments. Afterwards every finished task must have the right
result, no tag may stay in use, and the only fid either side knows must be the root.
"""

import random

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_fake_server import served
from ninep.protocol import messages as m

FILES = {f"f{i}": bytearray(f"file number {i}".encode() * (i + 1)) for i in range(4)}

operation = st.tuples(
    st.sampled_from(["read_file", "stat", "listdir", "walk", "getattr_raw"]),
    st.integers(0, len(FILES) - 1),
    st.one_of(st.none(), st.sampled_from([0.0, 0.0005, 0.001, 0.003])),  # cancel after
)


async def run_operation(client, kind: str, index: int):
    name = f"f{index}"
    if kind == "read_file":
        return await client.root.read_file(name)
    if kind == "stat":
        return (await client.root.stat(name)).size
    if kind == "listdir":
        return sorted(e.name for e in await client.root.listdir())
    if kind == "walk":
        async with client.root.walk(name) as walked:
            return walked.qid.path
    return (await client.getattr(client.root.fid)).qid.path


def expected(server, kind: str, index: int):
    name = f"f{index}"
    return {
        "read_file": bytes(FILES[name]),
        "stat": len(FILES[name]),
        "listdir": sorted(FILES),
        "walk": server.qid((name,)).path,
        "getattr_raw": server.qid(()).path,
    }[kind]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(operation, min_size=1, max_size=8), seed=st.integers(0, 2**32),
       answer_first=st.booleans())
async def test_books_stay_exact_under_random_cancellation(operations, seed, answer_first):
    delays = random.Random(seed)

    def slow_down(server):
        server.flush_answers_original_first = answer_first
        for cls, handler in list(server.handlers.items()):
            if cls in (m.Tversion, m.Tattach):
                continue

            async def delayed(request, handler=handler):
                await trio.sleep(delays.choice([0, 0, 0.0005, 0.001, 0.002]))
                return await handler(request)

            server.handlers[cls] = delayed

    tree = {name: bytearray(data) for name, data in FILES.items()}
    async with served(tree=tree, setup=slow_down, flush_timeout=1.0) as (server, client):
        results: dict[int, object] = {}

        async def task(number, kind, index, cancel_after):
            with trio.move_on_after(cancel_after if cancel_after is not None else 10):
                results[number] = await run_operation(client, kind, index)

        async with trio.open_nursery() as nursery:
            for number, (kind, index, cancel_after) in enumerate(operations):
                nursery.start_soon(task, number, kind, index, cancel_after)

        for number, (kind, index, _) in enumerate(operations):
            if number in results:
                assert results[number] == expected(server, kind, index)
        with trio.fail_after(3):  # orphan clunks finish in the background
            while client.in_flight or len(client.fids) != 1 or set(server.fids) != {0}:
                await trio.sleep(0.001)
        assert client.root.fid == 0 and not client.closed
