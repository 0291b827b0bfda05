"""What the nodes of one cluster must share, as fingerprints a node checks before it joins.

A node with another token key would answer every user routed to it with 4401 (which tells the
board to stop); a node with other plugins or profile definitions would serve values computed by
the leader's code. Redis holds only digests (a key's SHA-256, never the key), under ``nodes``;
every node refreshes them while it runs, so they expire with the last node and a cluster
restarted whole may change all three.
"""

from __future__ import annotations

import hashlib
import types
from collections.abc import Mapping, Sequence
from typing import Any

from quartsig.config import ConfigError
from quartsig.plugins.profiles import Profile


class ClusterMismatch(ConfigError):
    """This node does not belong to the cluster it was pointed at; the message says why (a
    configuration error: one line, exit 2)."""


def _digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _code(function: Any) -> bytes:
    """A function's behaviour as bytes: its bytecode, names and constants (nested code too)."""
    code = getattr(function, "__code__", function)
    if not isinstance(code, types.CodeType):
        return repr(getattr(function, "__qualname__", type(function).__name__)).encode()
    consts = [_code(const) if isinstance(const, types.CodeType) else repr(const).encode()
              for const in code.co_consts]
    return b"\0".join([code.co_code, repr(code.co_names).encode(), *consts])


def profile_digest(profile: Profile) -> str:
    return _digest(profile.name.encode(), profile.description.encode(),
                   repr(profile.columns).encode(), repr(profile.checked).encode(),
                   _code(profile.compute), _code(profile.compute_values))


def fingerprints(token_keys: Sequence[str], profiles: Mapping[str, Profile]) -> dict[str, str]:
    """``tokens``: digests of the token keys, the encrypting one first; ``plugins``: the
    profiles' names; ``profiles``: each profile's definition digest."""
    return {
        "tokens": ",".join(_digest(b"quartsig token key", key.encode()) for key in token_keys),
        "plugins": ",".join(sorted(profiles)),
        "profiles": ",".join(f"{name}:{profile_digest(profiles[name])}"
                             for name in sorted(profiles)),
    }


def differences(mine: Mapping[str, str], theirs: Mapping[str, str]) -> list[str]:
    """What keeps this node out of a cluster whose fingerprints are ``theirs``, one phrase each.

    Token keys agree when each side's encrypting key is among the other's keys, so a rolling
    rotation works: add the new key second everywhere, then first, then drop the old one."""
    found = []
    own, other = mine.get("tokens", "").split(","), theirs.get("tokens", "").split(",")
    if own[0] not in other or other[0] not in own:
        found.append("the token key differs (QUARTSIG_SECRET_KEYS)")
    own_names = set(filter(None, mine.get("plugins", "").split(",")))
    other_names = set(filter(None, theirs.get("plugins", "").split(",")))
    if own_names != other_names:
        extra, missing = sorted(own_names - other_names), sorted(other_names - own_names)
        found.append("the profiles differ (" + "; ".join(
            part for part in (f"only here: {' '.join(extra)}" if extra else "",
                              f"missing here: {' '.join(missing)}" if missing else "") if part)
            + ")")
    own_defs = dict(item.split(":", 1) for item in mine.get("profiles", "").split(",") if item)
    other_defs = dict(item.split(":", 1) for item in theirs.get("profiles", "").split(",")
                      if ":" in item)
    changed = sorted(name for name in own_defs.keys() & other_defs.keys()
                     if own_defs[name] != other_defs[name])
    if changed:
        found.append(f"the definition of profile {', '.join(changed)} differs")
    return found
