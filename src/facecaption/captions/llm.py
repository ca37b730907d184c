"""Optional caption rewrite by an LLM behind an OpenAI-compatible chat endpoint (vLLM, llama.cpp server, ...).

* batched and concurrent: captions go out in batches of ``batch_size``, ``concurrency`` requests at a time;
* cached: an append-only JSON-lines file under ``cache_dir`` (outside the declared outputs), keyed by the
  input text (and the model/prompt settings), flushed after every batch, so a rerun (or a run after a kill)
  sends nothing that already came back;
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


class Rewriter:
    def __init__(self, llm: dict):
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
        self.cache_path = Path(llm["cache_dir"]) / f"rewrite-{tag}.jsonl"
        self.cache: dict[str, str] = {}
        self.sent = 0  # requests sent in this process (tests check that a rerun sends nothing)
        self._load_cache()

    # -- cache ---------------------------------------------------------------------------------------------
    def _load_cache(self) -> None:
        if not self.cache_path.exists():
            return
        bad = 0
        with open(self.cache_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    self.cache[entry["k"]] = entry["out"]
                except (ValueError, KeyError, TypeError):
                    bad += 1  # a line cut short by a kill: ignored, its caption is simply sent again
        if bad:
            log.warning("%s: ignored %d incomplete line(s)", self.cache_path, bad)
        log.info("LLM cache %s: %d rewrites", self.cache_path, len(self.cache))

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
