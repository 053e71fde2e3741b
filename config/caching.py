"""A small per-process cache for rows that never change once written (published form and
schedule versions): keyed by tenant schema, tenant and id, because ids repeat across
tenants, and a tenant deleted and created again under the same name gets the same schema
name with ids starting over (the tenant's primary key is new). Bounded, the least
recently used falls out. Holders treat the values as read-only."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from config.db import tenant_connection

T = TypeVar("T")


class PerSchemaCache(Generic[T]):
    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, object, int], T] = OrderedDict()

    @staticmethod
    def _key(row_id: int) -> tuple[str, object, int]:
        tenant = getattr(tenant_connection, "tenant", None)
        return (getattr(tenant_connection, "schema_name", "public"), getattr(tenant, "pk", None), row_id)

    def get(self, row_id: int) -> T | None:
        key = self._key(row_id)
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, row_id: int, value: T) -> None:
        self._items[self._key(row_id)] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
