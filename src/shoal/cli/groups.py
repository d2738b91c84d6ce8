"""What the group commands (``shoal group``, ``publish``, ``subscribe``) share: where a
node keeps its groups, which group a name or id prefix means, and how a post is shown."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from shoal.errors import ShoalError


class GroupLike(Protocol):
    """What the commands read of a ``shoal.Group``."""

    id: str
    name: str
    is_admin: bool


def node_data_dir(given: Path | None) -> Path | None:
    """The folder of the command's node (its groups and their posts): ``--data-dir``,
    made if missing; ``None`` leaves it to the node, which keeps its groups beside its
    identity file (``alice.key``: ``alice.groups``), so that each identity has its own."""
    if given is None:
        return None
    if given.exists() and not given.is_dir():
        raise ShoalError(f"{given}: not a folder", code="ENOTDIR")
    try:
        given.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ShoalError(f"{given}: cannot create the data folder ({exc.strerror})",
                         code="EACCES") from None
    return given


def find_group(groups: Sequence[GroupLike], wanted: str) -> Any:
    """The one group whose name is ``wanted``, or whose id starts with it (at least 4 hex
    digits); a one-line ``ShoalError`` if none is, or several are."""
    named = [g for g in groups if g.name == wanted]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise ShoalError(f"{len(named)} groups are named {wanted!r}; give an id prefix: "
                         + ", ".join(g.id[:12] for g in named), code="EAMBIGUOUS")
    prefix = wanted.lower()
    matched = [g for g in groups if len(prefix) >= 4 and g.id.startswith(prefix)]
    if len(matched) == 1:
        return matched[0]
    if len(matched) > 1:
        raise ShoalError(f"{len(matched)} groups have ids starting {wanted!r}; give more "
                         "of the id", code="EAMBIGUOUS")
    hint = ("this node is in no group yet (shoal group create NAME, or shoal group join "
            "INVITE)" if not groups else "see: shoal group list")
    raise ShoalError(f"no group named {wanted!r} or with an id starting so; {hint}",
                     code="ENOENT")


def post_fields(post: Any) -> dict[str, Any]:
    """A post as the JSON line of ``subscribe --json``: ``data`` is the text itself when
    it is UTF-8, else its base64 with ``"encoding": "base64"``."""
    fields: dict[str, Any] = {"id": post.id, "author": post.author, "topic": post.topic,
                              "time": post.time}
    try:
        fields["data"] = post.data.decode("utf-8")
    except UnicodeDecodeError:
        fields["data"] = base64.b64encode(post.data).decode("ascii")
        fields["encoding"] = "base64"
    return fields


def post_time(seconds: float) -> str:
    """When a post was written, in local time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
