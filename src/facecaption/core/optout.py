"""Opt-out: URLs, URL hashes and domains that must never be downloaded or kept.

The ``optout`` config section names list files (``optout.lists``). One entry a line; ``#`` starts a comment.
An entry is one of

* a URL (``https://example.com/a.jpg``): that exact image (scheme and host compared case-insensitively,
  default port and ``#fragment`` ignored);
* a SHA-256 of a URL, 64 hex digits (``sha256:`` prefix optional): the hash of the URL string as it appears
  in the input list (the hash of its normalised form matches too), so a list can be published without the
  URLs themselves;
* a domain (``example.com``, ``domain:`` prefix optional): every URL on that host and its subdomains.

The collect stage honours the list before it downloads anything (opted-out rows get status ``opted_out``
and are never requested), on every redirect target, and again on what the download returned; the faces
stage checks each image's URL once more (``OptOut.from_config(cfg["optout"]).blocks(url)``), so an entry
added after the download still removes the image. Counts land in the collect parquet (status) and the
corpus report.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DEFAULT_PORT = {"http": 80, "https": 443}


def url_sha256(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def normalize_url(url: str) -> str:
    """Lower-case scheme and host, drop the default port and the fragment; everything else as given."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return url.strip()
    netloc = host
    if parts.username or parts.password:
        netloc = f"{parts.username or ''}{':' + parts.password if parts.password else ''}@{host}"
    if port is not None and port != _DEFAULT_PORT.get(parts.scheme.lower()):
        netloc += f":{port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path, parts.query, ""))


def url_host(url: str) -> str:
    try:
        return (urlsplit(url.strip()).hostname or "").lower().rstrip(".")
    except ValueError:
        return ""


class OptOut:
    """A set of opted-out URLs, URL hashes and domains; ``blocks(url)`` says whether a URL is covered."""

    def __init__(self, urls: Iterable[str] = (), hashes: Iterable[str] = (), domains: Iterable[str] = ()):
        self.urls = {normalize_url(u) for u in urls}
        self.hashes = {h.lower() for h in hashes}
        self.domains = {d.lower().strip(".") for d in domains}

    def __len__(self) -> int:
        return len(self.urls) + len(self.hashes) + len(self.domains)

    def __bool__(self) -> bool:
        return len(self) > 0

    @classmethod
    def parse(cls, lines: Iterable[str]) -> "OptOut":
        urls, hashes, domains = [], [], []
        for line in lines:
            entry = line.split("#", 1)[0].strip() if not line.lstrip().startswith(("http://", "https://")) \
                else line.strip()
            if not entry:
                continue
            low = entry.lower()
            if low.startswith("sha256:"):
                hashes.append(low[len("sha256:"):].strip())
            elif low.startswith("domain:"):
                domains.append(low[len("domain:"):].strip())
            elif low.startswith("url:"):
                urls.append(entry[len("url:"):].strip())
            elif "://" in entry:
                urls.append(entry)
            elif _HEX64.match(low):
                hashes.append(low)
            else:
                domains.append(low.split("/", 1)[0])
        return cls(urls, hashes, domains)

    @classmethod
    def from_config(cls, section: dict | None) -> "OptOut":
        """Read ``optout.lists`` (a missing list stops with one line naming the key and the path)."""
        from facecaption.core.config import require_path  # noqa: PLC0415

        section = section or {}
        lines: list[str] = []
        for i, path in enumerate(section.get("lists") or []):
            p = require_path(path, f"optout.lists[{i}]")
            lines.extend(p.read_text(encoding="utf-8").splitlines())
        lines.extend(section.get("entries") or [])
        return cls.parse(lines)

    def blocks(self, url: str | None) -> bool:
        if not url or not self:
            return False
        if self.hashes and (url_sha256(url) in self.hashes or url_sha256(url.strip()) in self.hashes):
            return True
        norm = normalize_url(url)
        if norm in self.urls or (self.hashes and url_sha256(norm) in self.hashes):
            return True
        if self.domains:
            host = url_host(url)
            while host:
                if host in self.domains:
                    return True
                _, _, host = host.partition(".")
        return False


def write_list(path: str | Path, entries: Iterable[str]) -> None:
    Path(path).write_text("".join(f"{e}\n" for e in entries), encoding="utf-8")
