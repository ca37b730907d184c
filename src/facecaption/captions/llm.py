"""Optional caption rewrite by an LLM behind an OpenAI-compatible chat endpoint (vLLM, llama.cpp server, ...).

* batched and concurrent: captions go out in batches of ``batch_size``, ``concurrency`` requests at a time;
* cached per shard: ``<cache_dir>/rewrite-<settings tag>/<shard>.jsonl``, an append-only JSON-lines file
  (outside the declared outputs) keyed by the input text, under a folder keyed by the model/prompt settings,
  flushed after every batch, so a rerun (or a run after a kill) sends nothing that already came back. A
  caption job reads only its own shard's file and keeps only the entries of the texts it is asked for, so
  its memory does not depend on the cache's total size (and no two jobs append to the same file). A text
  repeated in two shards is sent once per shard;
* an old shared cache (``<cache_dir>/rewrite-<tag>.jsonl``, one file for all shards) is read once per
  shard, streamed, to seed that shard's file with the entries it needs, and never written again;
* failures (HTTP errors, timeouts, bad JSON, empty answers) are recorded per caption and never cached, so
  the grammar caption is kept and a later run retries them;
* the API key is read from the environment variable named by ``api_key_env`` and never logged or written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)


class LLMConfigError(ValueError):
    pass


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _shard_name(shard: str | None) -> str:
    """A file-name-safe name for a shard's cache file (shard ids are plain; anything else is hashed)."""
    if not shard:
        return "unsharded"
    if all(ch.isalnum() or ch in "._-" for ch in shard) and not shard.startswith("."):
        return shard
    return "shard-" + _digest(shard)[:16]


class Rewriter:
    def __init__(self, llm: dict, shard: str | None = None):
        self.cfg = llm
        self.url = llm["base_url"].rstrip("/") + "/chat/completions"
        self._key = None
        env = llm.get("api_key_env")
        if env:
            self._key = os.environ.get(env)
            if not self._key:
                raise LLMConfigError(f"captions.llm.api_key_env names the environment variable {env}, which is not set")
        settings = {k: llm[k] for k in ("model", "prompt", "temperature", "max_tokens")}
        tag = _digest(json.dumps(settings, sort_keys=True))[:16]
        self.legacy_path = Path(llm["cache_dir"]) / f"rewrite-{tag}.jsonl"  # the old shared cache, read only
        self.cache_path = Path(llm["cache_dir"]) / f"rewrite-{tag}" / f"{_shard_name(shard)}.jsonl"
        self.cache: dict[str, str] = {}  # only the entries of the texts asked for (never the whole file)
        self.sent = 0  # requests sent in this process (tests check that a rerun sends nothing)
        self.lines_read = 0  # cache lines scanned in this process (tests check a job reads only its shard)

    # -- cache ---------------------------------------------------------------------------------------------
    def _scan(self, path: Path, wanted: set[str]) -> dict[str, str]:
        """The entries of ``path`` whose key is in ``wanted``, streamed line by line."""
        found: dict[str, str] = {}
        bad = 0
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                self.lines_read += 1
                try:
                    entry = json.loads(line)
                    if entry["k"] in wanted:
                        found[entry["k"]] = entry["out"]
                except (ValueError, KeyError, TypeError):
                    bad += 1  # a line cut short by a kill: ignored, its caption is simply sent again
        if bad:
            log.warning("%s: ignored %d incomplete line(s)", path, bad)
        return found

    def _load(self, wanted: set[str]) -> None:
        """Bring the cached rewrites of ``wanted`` (digests) into memory; seed the shard's file from an old
        shared cache once, the first time the shard's file is missing."""
        wanted = wanted - self.cache.keys()
        if not wanted:
            return
        if not self.cache_path.exists() and self.legacy_path.exists():
            seeded = self._scan(self.legacy_path, wanted)
            tmp = self.cache_path.with_name(self.cache_path.name + ".seed")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:  # written whole, then renamed: a kill never leaves a half-seeded file
                for k, v in seeded.items():
                    f.write((json.dumps({"k": k, "out": v}, ensure_ascii=False) + "\n").encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.cache_path)
            log.info("LLM cache %s: seeded %d rewrites from the old shared cache %s", self.cache_path, len(seeded),
                     self.legacy_path)
        if self.cache_path.exists():
            self.cache.update(self._scan(self.cache_path, wanted))
        log.info("LLM cache %s: %d of %d wanted rewrites cached", self.cache_path,
                 sum(k in self.cache for k in wanted), len(wanted))

    def _append(self, entries: list[tuple[str, str]]) -> None:
        if not entries:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cache_path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:  # after a kill the last line may lack its newline: never glue onto it
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            for text, out in entries:
                f.write((json.dumps({"k": _digest(text), "in": text, "out": out}, ensure_ascii=False) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())

    # -- requests ------------------------------------------------------------------------------------------
    def _request(self, text: str) -> str:
        body = {"model": self.cfg["model"], "temperature": self.cfg["temperature"], "max_tokens": self.cfg["max_tokens"],
                "messages": [{"role": "user", "content": self.cfg["prompt"].replace("{caption}", text)}]}
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = "Bearer " + self._key
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.cfg["timeout_s"]) as resp:  # noqa: S310 (configured endpoint)
            raw = resp.read()
        try:
            data = json.loads(raw)
        except ValueError:
            raise ValueError(f"bad JSON in response ({len(raw)} bytes)") from None
        try:
            out = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError("response has no choices[0].message.content") from None
        if not isinstance(out, str) or not out.strip():
            raise ValueError("empty rewrite")
        return " ".join(out.strip().strip('"').split())

    def _one(self, text: str) -> tuple[str | None, str | None]:
        """(rewrite, None) or (None, error message) after up to ``retries`` extra attempts."""
        error = None
        for _ in range(self.cfg["retries"] + 1):
            self.sent += 1
            try:
                return self._request(text), None
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
            except (TimeoutError, socket.timeout):
                error = f"timeout after {self.cfg['timeout_s']} s"
            except urllib.error.URLError as exc:
                reason = exc.reason
                error = (f"timeout after {self.cfg['timeout_s']} s" if isinstance(reason, (TimeoutError, socket.timeout))
                         else f"connection error: {type(reason).__name__}")
            except (ValueError, OSError) as exc:
                error = str(exc) if isinstance(exc, ValueError) else f"connection error: {type(exc).__name__}"
        return None, error

    def rewrite(self, texts: list[str]) -> list[tuple[str | None, str | None]]:
        """For each text: (rewrite or None, error or None). Cached texts are not sent again."""
        self._load({_digest(t) for t in texts})
        todo = [t for t in dict.fromkeys(texts) if _digest(t) not in self.cache]
        errors: dict[str, str] = {}
        bs = self.cfg["batch_size"]
        if todo:
            log.info("LLM rewrite: %d captions to send (%d cached) to %s", len(todo), len(set(texts)) - len(todo), self.url)
        with ThreadPoolExecutor(max_workers=self.cfg["concurrency"]) as pool, \
                tqdm(total=len(todo), desc="llm rewrite", mininterval=5, disable=not todo) as bar:
            for i in range(0, len(todo), bs):
                batch = todo[i:i + bs]
                done = []
                for text, (out, err) in zip(batch, pool.map(self._one, batch)):
                    if out is None:
                        errors[text] = err
                    else:
                        self.cache[_digest(text)] = out
                        done.append((text, out))
                self._append(done)
                bar.update(len(batch))
        if errors:
            log.warning("LLM rewrite: %d of %d captions failed (grammar captions kept); first: %s",
                        len(errors), len(set(texts)), next(iter(errors.values())))
        return [(self.cache.get(_digest(t)), errors.get(t)) for t in texts]
