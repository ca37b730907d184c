"""A LAION-Face-like crawl on loopback: synthface photos served over HTTP, listed in a URL parquet.

``LoopbackCrawl`` renders photos with the embedded renderer (faces large enough for the paper's 128 px floor,
plus the renderer's usual no-face, group, tiny and degraded pictures), serves them from a real HTTP server
on 127.0.0.1, and writes ``URL``/``TEXT`` parquet parts in LAION's column names, with dead links (404) and
a URL that does not answer, as a real list has.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd

from facecaption.collect.synthface import alt_text, plan_image
from facecaption.core import config as fc_config
from facecaption.core import rng as rngmod
from facecaption.core.shards import encode_jpeg
from facecaption.synthface.render import render_image, sample_identity


class LoopbackCrawl:
    def __init__(self, n_images: int, seed: int = 7, image_size: int = 512, dead_every: int = 9):
        sf = fc_config.validate({"synthface": {"image_size": image_size}})["synthface"]
        self.files: dict[str, bytes] = {}
        self.rows: list[tuple[str, str]] = []
        self.requests: list[str] = []
        files, requests = self.files, self.requests

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                requests.append(self.path)
                body = files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        for i in range(n_images):
            rng = rngmod.stream(seed, "rehearsal/crawl", i)
            plan = plan_image(rng, sf)
            ids = [int(rng.integers(0, sf["identities"])) for _ in range(plan["n_faces"])]
            identities = [sample_identity(rngmod.stream(seed, "synthface/identity", k)) for k in ids]
            image, faces = render_image(rng, size=sf["image_size"], n_faces=plan["n_faces"],
                                        face_scale=plan["face_scale"], degrade=plan["degrade"], identities=identities)
            path = f"/photos/{i:05d}.jpg"
            if i % dead_every != dead_every - 1:  # every dead_every-th link is dead
                self.files[path] = encode_jpeg(image, quality=sf["jpeg_quality"])
            self.rows.append((base + path, alt_text(rng, faces)))
        # a host that refuses connections
        self.rows.append(("http://127.0.0.1:9/nothing-listens-here.jpg", "a dead host"))

    @property
    def dead(self) -> int:
        return sum(1 for url, _ in self.rows if url.split("127.0.0.1:", 1)[1].split("/", 1)[1] not in
                   {p.lstrip("/") for p in self.files})

    def write_laion(self, meta_folder: Path, ids_file: Path, parts: int = 2, others: int = 30) -> dict:
        """What LAION-Face really ships: LAION-400M metadata parts (``SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH, LICENSE,
        NSFW, similarity``) holding this crawl's rows among ``others`` rows that are not faces, and FaRL's ID list
        (a torch-saved list of per-part ID lists) naming the crawl's rows plus two IDs no part holds. Returns the
        counts the join must report."""
        import torch

        meta_folder = Path(meta_folder)
        meta_folder.mkdir(parents=True, exist_ok=True)
        rows = [(1000 + 7 * i, url, text) for i, (url, text) in enumerate(self.rows)]
        rows += [(500_000 + i, f"http://127.0.0.1:9/not-a-face-{i}.jpg", "a landscape") for i in range(others)]
        id_lists = []
        for k in range(parts):
            part = rows[k::parts]
            pd.DataFrame({"SAMPLE_ID": [r[0] for r in part], "URL": [r[1] for r in part], "TEXT": [r[2] for r in part],
                          "HEIGHT": 256, "WIDTH": 256, "LICENSE": "?", "NSFW": "UNLIKELY", "similarity": 0.31}
                         ).to_parquet(meta_folder / f"part-{k:05d}-5b54c5d5-bbcf-484d-a2ce-0d6f73df1a36-c000.snappy.parquet",
                                      index=False)
            id_lists.append([r[0] for r in part if r[0] < 500_000])
        id_lists[0] += [999_999_001, 999_999_002]  # IDs whose metadata row the user does not have
        Path(ids_file).parent.mkdir(parents=True, exist_ok=True)
        torch.save(id_lists, ids_file)
        return {"matched": len(self.rows), "unmatched": 2, "not_listed": others}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
