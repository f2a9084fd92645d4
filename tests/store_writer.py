"""A second process on a shared SQLite response store, run by the store tests.

``python store_writer.py DB NAME PEER COUNT``: stores COUNT records with ids ``NAME-i`` (owner NAME),
then waits until it can read COUNT records of PEER (ids ``PEER-i``) and exits 0; exits 1 if they do
not all appear within a minute.
"""

from __future__ import annotations

import asyncio
import sys
import time

from llm_middleware.store import SQLiteResponseStore, StoredItem, StoredResponse


async def main(path: str, name: str, peer: str, count: int) -> int:
    store = SQLiteResponseStore(path)
    try:
        for i in range(count):
            record = StoredResponse(
                id=f"{name}-{i}", owner=name, created_at=time.time(), status="completed", response=f"{i}".encode()
            )
            await store.put(record, [StoredItem(id=f"{name}-{i}-item", data=b"{}")])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = [await store.get(peer, f"{peer}-{i}") for i in range(count)]
            if all(record is not None for record in seen):
                return 0
            await asyncio.sleep(0.05)
        return 1
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))
