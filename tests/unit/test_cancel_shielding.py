"""A caller that cancels its own call must not cancel a future other callers share.

Ray's ``ray.cancel`` raises ``CancelledError`` in the cancelled actor task; a shared future
awaited there directly is cancelled with it. In a BFT verifier, every ``submit_claim`` call for
one task waits on the same commit future, and any verifier can send an honest one an entry it
has seen and then cancel its own call (see ``bft_ray.verifier.group``). No Ray here: the
verifier object is driven on a plain event loop.
"""

from __future__ import annotations

import asyncio

from bft_ray.crypto import SigningKey
from bft_ray.verifier.group import BftVerifier, GroupSetup


def test_a_cancelled_waiter_leaves_the_shared_commit_wait_of_others(tmp_path):
    setup = GroupSetup("unit", 0, 4, SigningKey.generate().public_bytes, str(tmp_path))
    verifier = BftVerifier(setup)

    async def scenario() -> object:
        attacker = asyncio.ensure_future(verifier._committed("t1"))
        dispatcher = asyncio.ensure_future(verifier._committed("t1"))
        await asyncio.sleep(0)  # both wait on the one future for t1
        attacker.cancel()  # what ray.cancel does to the attacker's own call
        await asyncio.sleep(0)
        verifier._waiters.pop("t1").set_result("committed")  # what _pump does on commit
        return await dispatcher

    assert asyncio.run(scenario()) == "committed"
