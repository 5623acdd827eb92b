"""Tree blobs: directory listings whose nodes point at content blobs and subtrees."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"


@dataclass
class Node:
    name: str
    type: str
    mode: int = 0
    mtime_ns: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    content: list[str] = field(default_factory=list)
    subtree: str | None = None
    target: str | None = None
    inode: int = 0
    ctime_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
            "uid": self.uid,
            "gid": self.gid,
        }
        if self.type == FILE:
            d.update(size=self.size, content=self.content, inode=self.inode,
                     ctime_ns=self.ctime_ns)
        elif self.type == DIR:
            d["subtree"] = self.subtree
        elif self.type == SYMLINK:
            d["target"] = self.target
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Node:
        return cls(
            name=d["name"],
            type=d["type"],
            mode=d.get("mode", 0),
            mtime_ns=d.get("mtime_ns", 0),
            uid=d.get("uid", 0),
            gid=d.get("gid", 0),
            size=d.get("size", 0),
            content=list(d.get("content", [])),
            subtree=d.get("subtree"),
            target=d.get("target"),
            inode=d.get("inode", 0),
            ctime_ns=d.get("ctime_ns", 0),
        )


def encode_tree(nodes: list[Node]) -> bytes:
    nodes = sorted(nodes, key=lambda n: n.name)
    return json.dumps({"nodes": [n.to_dict() for n in nodes]}, separators=(",", ":")).encode()


def decode_tree(raw: bytes) -> list[Node]:
    return [Node.from_dict(d) for d in json.loads(raw)["nodes"]]
