"""Which rows reference a store entry, and the lock that orders placing against deleting.

A transaction that writes a row referencing an entry holds the entry's lock shared from placing
the entry until it commits; deleting an entry takes the lock exclusively and checks that no
committed row references it. So an entry is never deleted under a row that points at it, and a
row is never committed that points at a deleted entry.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# The first key of the two-key advisory locks on store entries ('LTst').
_NAMESPACE = 0x4C547374


def lock(conn: Connection, rel_path: str, *, shared: bool) -> None:
    """Hold the entry's lock until the transaction ends (shared: to reference it)."""
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    conn.execute(
        sa.text(f"SELECT {fn}(:ns, hashtext(:path))"), {"ns": _NAMESPACE, "path": rel_path}
    )


def referenced(conn: Connection, rel_path: str) -> bool:
    """Whether an sae's activations or a family's model inputs are the entry at `rel_path`."""
    return bool(
        conn.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM sae WHERE activations_path = :p)"
                " OR EXISTS (SELECT 1 FROM family WHERE inputs ->> 'path' = :p)"
            ),
            {"p": rel_path},
        ).scalar_one()
    )
