"""Who is asking: API keys, the id a job records of the key that made it, and admin keys.

`THORAX_API_KEYS` is comma-separated; a key written `admin:KEY` is the key `KEY`, marked admin. A job
records the id of the key that submitted it (a hash, never the key); a key sees and acts only on its own
jobs, an admin key on all. Without any key configured the gateway is open and everyone acts as admin.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

ADMIN_MARK = "admin:"


@dataclass(frozen=True)
class Caller:
    key_id: str | None  # None: no key (an open gateway, or `thorax generate` in-process)
    admin: bool

    def may_see(self, owner: str | None) -> bool:
        return self.admin or (owner is not None and hmac.compare_digest(owner, self.key_id or ""))


LOCAL = Caller(key_id=None, admin=True)  # in-process callers and an open gateway


def key_id(key: str) -> str:
    """What a job records of its key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def parse_keys(text: str) -> dict[str, bool]:
    """`THORAX_API_KEYS` -> key -> whether it is an admin key."""
    keys: dict[str, bool] = {}
    for item in (k.strip() for k in text.split(",")):
        admin = item.startswith(ADMIN_MARK)
        key = item.removeprefix(ADMIN_MARK).strip()
        if key:
            keys[key] = keys.get(key, False) or admin
    return keys
