"""Stored responses: the store protocol, its in-process and SQLite implementations, and the option that picks one.

The store holds encoded JSON it never reads beside a few indexed fields, so it knows no protocol's
wire types and nothing of HTTP; the API puts and reads records, the middleware's ``response_store``
option picks the store.  See ``docs/stored-responses.md``.
"""

from .memory import MemoryResponseStore
from .protocol import ItemPage, Order, ResponseStore, StoredItem, StoredResponse, page_of
from .resolve import ResponseStoreOption, open_response_store, store_from_url
from .sqlite import SQLiteResponseStore

__all__ = [
    "ItemPage", "MemoryResponseStore", "Order", "ResponseStore", "ResponseStoreOption", "SQLiteResponseStore",
    "StoredItem", "StoredResponse", "open_response_store", "page_of", "store_from_url",
]
