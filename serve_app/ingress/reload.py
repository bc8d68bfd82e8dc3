"""Hot reload of the policy file: a changed file takes effect without a restart.

`PolicyReloader.check()` (called every `RELOAD_PERIOD_S` by the ingress replica) looks
at the file's modification time and size; when they changed it loads and validates the
file with the same loader as `rtcts policy validate`, and:

- an invalid file is refused: the old policy keeps serving, and the error is logged with
  exactly the message `rtcts policy validate` prints (once per change of the file);
- a file that changes the set of models, or a model's deployment (backend, hardware,
  throughput, autoscaling), is refused too: model deployments are bound when the app is
  deployed, so that needs a redeploy (`serve deploy`, or restarting `rtcts run`);
- anything else (prices, plans, floors, SLAs, limits, tenants, keys, routes) is applied:
  `apply` swaps the replica's `PolicyView` in one assignment. Requests already decided
  finish at the terms they were quoted (their `ChatCall` holds them); every request
  decided after the swap sees the new version (`x-rtcts-policy-version`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from serve_app.errors import PolicyError
from serve_app.policy import LoadedPolicy, load_policy_file
from serve_app.policy.schema import Policy

logger = logging.getLogger("rtcts.reload")

RELOAD_PERIOD_S = 1.0


def deployment_changes(old: Policy, new: Policy) -> list[str]:
    """What in `new` needs model deployments redeployed (empty: a reload can apply it).
    A model's prices live in plans; what is compared is what its deployment is built
    from (the policy's model entries)."""
    before = {m.id: m.model_dump(mode="json") for m in old.models}
    after = {m.id: m.model_dump(mode="json") for m in new.models}
    changes = [f"model '{m}' added" for m in sorted(after.keys() - before.keys())]
    changes += [f"model '{m}' removed" for m in sorted(before.keys() - after.keys())]
    changes += [
        f"model '{m}' changed"
        for m in sorted(before.keys() & after.keys())
        if before[m] != after[m]
    ]
    return changes


class PolicyReloader:
    def __init__(
        self,
        path: Path,
        current: LoadedPolicy,
        apply: Callable[[LoadedPolicy], None],
    ) -> None:
        self._path = path
        self._current = current
        self._apply = apply
        self._seen = self._stamp()
        self.refused: str | None = None
        """Why the file on disk is not serving (None when it is)."""

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self._path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def check(self) -> bool:
        """Reload the file if it changed; True when a new version was applied."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        try:
            loaded = load_policy_file(self._path)
        except PolicyError as exc:
            self.refused = str(exc)
            logger.error(
                "policy reload refused; version %s keeps serving:\n%s", self._current.version, exc
            )
            return False
        if loaded.version == self._current.version:
            return False
        changes = deployment_changes(self._current.policy, loaded.policy)
        if changes:
            self.refused = (
                f"{self._path}: changes model deployments ({'; '.join(changes)}): "
                "redeploy the app to apply them"
            )
            logger.error(
                "policy reload refused; version %s keeps serving: %s",
                self._current.version,
                self.refused,
            )
            return False
        self._apply(loaded)
        logger.warning("policy reloaded: version %s -> %s", self._current.version, loaded.version)
        self._current = loaded
        self.refused = None
        return True
