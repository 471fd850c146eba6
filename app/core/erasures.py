"""The users this process knows are erased (GDPR): its own deletions and those its
flushes met. A fast path and the place skipped events are counted — the merge statement
checks the tombstones itself, so a deletion answered by another replica holds here too
(tables/merge_sql.py, docs/contract.md §1.1)."""

from __future__ import annotations

from collections import OrderedDict


class ErasedUsers:
    """Bounded (oldest forgotten first: the database still has them)."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._users: OrderedDict[str, None] = OrderedDict()

    def add(self, user_id: str) -> None:
        users = self._users
        users[user_id] = None
        users.move_to_end(user_id)
        if len(users) > self.max_entries:
            users.popitem(last=False)

    def discard(self, user_id: str) -> None:
        self._users.pop(user_id, None)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def __len__(self) -> int:
        return len(self._users)
