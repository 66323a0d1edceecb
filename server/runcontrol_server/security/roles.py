"""The three roles and THE table from RPC to the role it needs.

Roles are ordered, each includes the ones below it: a `reader` watches and reads, a
`worker` also moves runs through their statuses and renews its leases, an `admin`
may do everything (create, cancel, delete, attached waits).
"""

from __future__ import annotations

from enum import IntEnum


class Role(IntEnum):
    READER = 1
    WORKER = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        """The name used in the tokens file and in ErrorInfo metadata."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            names = ", ".join(role.label for role in cls)
            raise ValueError(f"unknown role {text!r} (expected one of {names})") from None


# RPC name -> the least role that may call it.
METHOD_ROLES: dict[str, Role] = {
    "GetRun": Role.READER,
    "ListRuns": Role.READER,
    "WatchRuns": Role.READER,
    "HasInflight": Role.READER,
    "WaitRun": Role.READER,  # attach = true needs more: see `required_role`
    "SetRunStatus": Role.WORKER,
    "RenewRunLease": Role.WORKER,
    "CreateRun": Role.ADMIN,
    "CancelRun": Role.ADMIN,
    "DeleteRun": Role.ADMIN,
}


def required_role(method: str, request: object) -> Role:
    """The role `method` needs for this `request`.

    An attached WaitRun cancels the run when its caller goes away, which is
    CancelRun's power, so it needs `admin` like CancelRun (a worker ends its own run
    with SetRunStatus, never by hanging up). A method missing from the table (an RPC
    added later without a decision) needs `admin`: unknown means closed.
    """
    if method == "WaitRun" and getattr(request, "attach", False) is True:
        return Role.ADMIN
    return METHOD_ROLES.get(method, Role.ADMIN)
