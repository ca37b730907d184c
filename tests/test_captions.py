"""Captions: the grammar (faithful, seeded, pronouns and negations, clear errors), the captions stage and its
report, the captions of rendered faces against the renderer's ground truth, and the LLM rewrite against a real
HTTP server on loopback (successes, cache, 500s, timeouts, bad JSON)."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import run_stage, tiny_config
from support.llm import FakeLLM

from facecaption.captions import CaptionInputError, label_columns
from facecaption.captions.grammar import Generator, Grammar, GrammarError, default_path
from facecaption.captions.llm import Rewriter
from facecaption.core.celeba import ATTRIBUTES
from facecaption.core.shards import ShardWriter, encode_jpeg, iter_samples, read_parquet, write_parquet
from facecaption.synthface.truth import truth_labels

GEN = Generator(Grammar.load())


def random_labels(rnd: random.Random, p=(0.25, 0.55, 0.2)) -> dict:
    return {a: rnd.choices([1, 0, -1], weights=p)[0] for a in ATTRIBUTES}


# -- grammar ---------------------------------------------------------------------------------------------------
def test_every_stated_fact_is_a_kept_label():
    rnd = random.Random(0)
    for _ in range(2000):
        labels = random_labels(rnd)
        text, stated = GEN.caption(labels, rnd)
        assert text and text[0].isupper() and text.endswith(".")
        for attr, value in stated:
            assert labels[attr] == value, (attr, value, text)


def test_pronouns_follow_gender_and_negations_appear():
    base = {a: -1 for a in ATTRIBUTES}
    man = {**base, "Male": 1, "Smiling": 1, "Eyeglasses": 0, "Wearing_Hat": 0, "No_Beard": 1, "Black_Hair": 1,
           "Big_Nose": 1, "Mouth_Slightly_Open": 1}
    woman = {**man, "Male": 0}
    person = {**man, "Male": -1}
    texts = {k: [GEN.caption(v, random.Random(i))[0] for i in range(40)] for k, v in
             {"man": man, "woman": woman, "person": person}.items()}
    joined = {k: " ".join(v).lower() for k, v in texts.items()}
    assert " he " in joined["man"] and " she " not in joined["man"] and " her " not in joined["man"]
    assert " she " in joined["woman"] and " he " not in joined["woman"] and " his " not in joined["woman"]
    assert " he " not in joined["person"] and " she " not in joined["person"] and "person" in joined["person"]
    assert "beard" not in joined["woman"] and "clean-shaven" not in joined["woman"]  # No_Beard@female: never said
    assert any(w in joined["man"] for w in ("without a beard", "no beard", "clean-shaven"))
    assert any(w in joined["man"] for w in ("does not wear glasses", "wears no glasses", "without glasses"))
    assert len(set(texts["man"])) > 30  # varied wording


def test_sampling_is_seeded_by_face_not_order():
    from facecaption.captions import caption_faces

    labels = np.array([[1, 0, 1, 1], [0, 1, -1, 1]], np.int8)
    attrs = ["Male", "Smiling", "Eyeglasses", "Young"]
    a = list(caption_faces(GEN, 0, ["k1", "k2"], labels, attrs, 3))
    b = list(caption_faces(GEN, 0, ["k2", "k1"], labels[::-1], attrs, 3))
    assert a[0] == b[1] and a[1] == b[0]
    c = list(caption_faces(GEN, 1, ["k1", "k2"], labels, attrs, 3))
    assert c != a


@pytest.mark.parametrize("text, line, message", [
    ("version: 1\nrules:\n  A: [x\n", 4, "not valid YAML"),
    ("version: 1\nrules:\n  A: [\"<B>\"]\n", 3, "unknown nonterminal <B>"),
    ("version: 1\nrules:\n  A: [\"<B>\"]\n  B: [\"<A>\"]\n", 3, "the rules loop"),
    ("version: 1\nrules:\n  A: [[-1, x]]\n", 3, "weight -1 must be > 0"),
    ("version: 1\npresent:\n  Male: []\n  Grinning: [x]\n", 4, "unknown attribute 'Grinning'"),
    ("version: 1\nsettings:\n  wobble: 1\n", 3, "unknown setting 'wobble'"),
    ("version: 1\ngroups:\n  basics:\n    sentence: [\"<Subj> smiles.\"]\n", 4, "lacks the {phrases} slot"),
    ("version: 2\n", 1, "version must be 1"),
])
def test_malformed_grammar_names_the_line(tmp_path, text, line, message):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(GrammarError) as err:
        Grammar.load(path)
    assert str(err.value).startswith(f"{path}:{line}:") and message in str(err.value)


def test_shipped_grammar_error_on_broken_copy(tmp_path):
    lines = default_path().read_text().splitlines()
    i = next(n for n, s in enumerate(lines) if s.strip().startswith("Goatee:"))
    lines[i] = '  Goatee: [[3, "has a <Beardy>"]]'
    (tmp_path / "g.yaml").write_text("\n".join(lines))
    with pytest.raises(GrammarError, match=rf"g.yaml:{i + 1}: unknown nonterminal <Beardy>"):
        Grammar.load(tmp_path / "g.yaml")


def test_attribute_table_is_checked():
    df = pd.DataFrame({"key": ["a"], "p_Male": [0.9], "Male": [1], "n_labels": [6], "kept": [True], "reason": [""]})
    assert label_columns(df, "s.parquet") == ["Male"]
    with pytest.raises(CaptionInputError, match="s.parquet: unknown attribute column 'Grinning'"):
        label_columns(df.assign(Grinning=1), "s.parquet")
    with pytest.raises(CaptionInputError, match="'Male' is empty"):
        label_columns(df.assign(Male=[None]), "s.parquet")
    with pytest.raises(CaptionInputError, match="missing column 'kept'"):
        label_columns(df.drop(columns="kept"), "s.parquet")


# -- the stage ---------------------------------------------------------------------------------------------------
def make_inputs(n: int = 12, shard: str = "00000") -> pd.DataFrame:
    """A faces shard and its attributes parquet (some faces not kept), written to results/, and an empty ground
    truth (as a real source has): the truth audit is test_captions_state_the_rendered_truth's."""
    rnd = random.Random(3)
    attrs = [a for a in ATTRIBUTES if a != "Attractive"]
    faces, arows = [], []
    Path("results/faces").mkdir(parents=True, exist_ok=True)
    with ShardWriter(f"results/faces/{shard}.tar") as w:
        for i in range(n):
            image_key, key = f"{shard}_{i:05d}", f"{shard}_{i:05d}_00"
            img = np.full((32, 32, 3), 40 + 10 * i, np.uint8)
            w.write({"__key__": key, "jpg": encode_jpeg(img), "json": {"image_key": image_key, "face": 0}})
            faces.append({"key": key, "image_key": image_key, "face": 0, "score": 0.99, "x0": 0.0, "y0": 0.0,
                          "x1": 30.0, "y1": 30.0, "alt_text": f"photo {i}"})
            lab = random_labels(rnd, (0.3, 0.6, 0.1))
            n_labels = sum(v >= 0 for a, v in lab.items() if a in attrs)
            kept = i % 4 != 3
            arows.append({"key": key, **{f"p_{a}": 0.5 for a in attrs}, **{a: lab[a] for a in attrs},
                          "n_labels": n_labels if kept else 2, "kept": kept,
                          "reason": "" if kept else "too_few_labels: 2 <= 5"})
    write_parquet(pd.DataFrame(faces), f"results/faces/{shard}.parquet")
    Path("results/attributes").mkdir(parents=True, exist_ok=True)
    adf = pd.DataFrame(arows)
    for a in attrs:
        adf[a] = adf[a].astype(np.int8)
    write_parquet(adf, f"results/attributes/{shard}.parquet")
    Path("results/collect").mkdir(parents=True, exist_ok=True)
    write_parquet(pd.DataFrame(columns=["key", "face"]), f"results/collect/{shard}.truth.parquet")
    return adf


def stage_config(**over) -> dict:
    from facecaption.core.config import deep_merge

    return tiny_config(**deep_merge({"synthface": {"num_shards": 1}, "captions": {"examples": 4}}, over))


def test_captions_stage_and_report(workdir):
    adf = make_inputs()
    cfg = stage_config()
    assert run_stage("captions", cfg, "00000") == 0
    df = read_parquet("results/captions/00000.parquet")
    assert df["key"].tolist() == adf.loc[adf.kept, "key"].tolist()  # every kept face, in order
    assert {"key", "image_key", "caption", "captions", "grammar_caption", "rewritten", "rewrite_error", "alt_text",
            "n_labels"} <= set(df.columns)
    assert all(len(c) == cfg["captions"]["per_face"] for c in df["captions"])
    assert (df["caption"] == df["grammar_caption"]).all() and not df["rewritten"].any()
    schema = pq.read_schema("results/captions/00000.parquet")  # plain arrow types only (HF datasets loads them)
    assert str(schema.field("captions").type) == "list<element: string>"
    samples = list(iter_samples("results/captions/00000.tar"))
    assert [s["__key__"] for s in samples] == df["key"].tolist()
    assert samples[0]["txt"].decode() == df["caption"].iloc[0] and "jpg" in samples[0]
    # rerun: byte-identical outputs
    before = Path("results/captions/00000.tar").read_bytes()
    assert run_stage("captions", cfg, "00000") == 0
    assert Path("results/captions/00000.tar").read_bytes() == before

    assert run_stage("report_captions", cfg) == 0
    m = json.loads(Path("results/reports/captions/metrics.json").read_text())
    assert m["faces_captioned"] == len(df) and m["faithful_to_labels"] == 1.0
    assert m["audit_truth"] is False and m["true_in_ground_truth"] is None  # no ground truth to check against
    assert len(m["example_keys"]) == 4 and Path("results/reports/captions/figures/examples.png").exists()


# -- against the renderer's ground truth --------------------------------------------------------------------------
# What a caption's words say about a few attributes, read from the text alone (not from the stage's own
# ``stated`` column): the words of a present value, and the phrases of an absent one (negations are never
# merged with other phrases, so they appear whole).
TEXT_FACTS = {
    "Smiling": (r"smil", ("is not smiling", "has a neutral expression")),
    "Eyeglasses": (r"\bglasses\b|\beyeglasses\b", ("does not wear glasses", "wears no glasses", "without glasses")),
    "Wearing_Hat": (r"\bhat\b", ("does not wear a hat", "wears no hat")),
}
MALE_WORDS, FEMALE_WORDS = r"\b(he|his|him|man|gentleman|guy)\b", r"\b(she|her|woman|lady)\b"


def text_facts(text: str) -> set[tuple[str, int]]:
    """(attribute, value) pairs the words of ``text`` state, for TEXT_FACTS and the gender."""
    low = text.lower()
    out = set()
    for attr, (present, absent) in TEXT_FACTS.items():
        rest = low
        for phrase in absent:
            if phrase in rest:
                out.add((attr, 0))
                rest = rest.replace(phrase, " ")
        if re.search(present, rest):
            out.add((attr, 1))
    if re.search(MALE_WORDS, low):
        out.add(("Male", 1))
    if re.search(FEMALE_WORDS, low):
        out.add(("Male", 0))
    return out


def oracle_attributes(faces: pd.DataFrame, truth: pd.DataFrame, attrs: list[str]) -> pd.DataFrame:
    """An attributes table that knows the rendered truth: a face matched to a rendered face gets its true labels,
    every third one withheld as not confident (-1); a face matched to none is dropped (``no_truth``)."""
    true = truth_labels(faces, truth, attrs)
    rows = []
    for i, key in enumerate(faces["key"]):
        labels = {a: -1 for a in attrs}
        if key in true.index:
            labels.update({a: int(true.at[key, a]) for j, a in enumerate(attrs) if (i + j) % 3})
        n = sum(v >= 0 for v in labels.values())
        rows.append({"key": key, **labels, "n_labels": n, "kept": n > 5, "reason": "" if n > 5 else "no_truth"})
    df = pd.DataFrame(rows, columns=["key", *attrs, "n_labels", "kept", "reason"])
    return df.astype({a: np.int8 for a in attrs} | {"n_labels": np.int16, "kept": bool})


def test_captions_state_the_rendered_truth(collected):
    """Rendered faces (collect, faces) captioned from an attribute table that holds their true labels: every
    attribute a caption states (its ``stated`` column, and what its words say about gender, smiles, glasses
    and hats) is the renderer's ground truth (``collect/<shard>.truth.parquet``) of that face, and the report's
    truth audit agrees. A caption stage that states another face's or a wrong value fails it."""
    cfg = stage_config(paper={"sections": ["captions"]})
    assert run_stage("faces", cfg, "00000") == 0
    faces = read_parquet("results/faces/00000.parquet")
    truth = read_parquet("results/collect/00000.truth.parquet")
    attrs = [a for a in ATTRIBUTES if a in truth.columns]
    adf = oracle_attributes(faces, truth, attrs)
    Path("results/attributes").mkdir(parents=True, exist_ok=True)
    write_parquet(adf, "results/attributes/00000.parquet")
    assert run_stage("captions", cfg, "00000") == 0

    caps = read_parquet("results/captions/00000.parquet")
    true = truth_labels(faces, truth, attrs)  # the renderer's labels of each detected face, matched by box
    assert caps["key"].tolist() == adf.loc[adf.kept, "key"].tolist() and len(caps) >= 20
    given = adf.set_index("key")
    facts = worded = 0
    for key, texts, stated in zip(caps["key"], caps["captions"], caps["stated"]):
        for item in stated:
            attr, _, value = item.rpartition("=")
            assert given.at[key, attr] == int(value), (key, item)  # only kept labels are stated ...
            assert true.at[key, attr] == int(value), (key, item, texts)  # ... and they are what was rendered
            facts += 1
        for text in texts:
            for attr, value in text_facts(text):
                assert true.at[key, attr] == value, (key, attr, value, text)
                worded += 1
    # measured: 40 faces captioned, 342 stated facts and 236 worded ones checked (the checks are not vacuous)
    assert facts >= 5 * len(caps) and worded >= len(caps)

    assert run_stage("report_captions", cfg) == 0
    m = json.loads(Path("results/reports/captions/metrics.json").read_text())
    assert m["audit_truth"] is True and m["true_in_ground_truth"] == 1.0 and m["faithful_to_labels"] == 1.0
    assert m["facts_checked_against_truth"] == facts and m["faces_checked_against_truth"] == len(caps)


def test_unknown_attribute_column_stops_the_stage(workdir):
    adf = make_inputs(4)
    write_parquet(adf.assign(Grinning=np.int8(1)), "results/attributes/00000.parquet")
    with pytest.raises(CaptionInputError, match="unknown attribute column 'Grinning'"):
        run_stage("captions", stage_config(), "00000")


# -- LLM rewrite ---------------------------------------------------------------------------------------------------
@pytest.fixture
def llm_server():
    s = FakeLLM()
    yield s
    s.close()


def llm_cfg(server, tmp_path, **over) -> dict:
    cfg = stage_config(captions={"llm": {"enabled": True, "base_url": server.url, "timeout_s": 0.4, "retries": 1,
                                         "batch_size": 3, "concurrency": 3, "cache_dir": str(tmp_path / "cache"),
                                         **over}})
    return cfg["captions"]["llm"]


def test_llm_rewrite_batches_caches_and_keeps_the_key_secret(llm_server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FC_TEST_KEY", "sk-secret-123")
    cfg = llm_cfg(llm_server, tmp_path, api_key_env="FC_TEST_KEY")
    texts = [f"The man is young {i}." for i in range(7)] + ["The man is young 0."]
    with caplog.at_level(logging.DEBUG):
        out = Rewriter(cfg).rewrite(texts)
    assert [o for o, _ in out] == ["REWRITTEN: " + t for t in texts] and all(e is None for _, e in out)
    assert len(llm_server.requests) == 7  # the duplicate was sent once
    assert all(r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer sk-secret-123" for r in llm_server.requests)
    # a rerun sends nothing
    again = Rewriter(cfg)
    assert again.rewrite(texts) == out and again.sent == 0 and len(llm_server.requests) == 7
    cache_text = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert "sk-secret" not in cache_text and "sk-secret" not in caplog.text


def test_llm_missing_key_variable_is_a_clear_error(llm_server, tmp_path, monkeypatch):
    monkeypatch.delenv("FC_NO_SUCH_KEY", raising=False)
    from facecaption.captions.llm import LLMConfigError

    with pytest.raises(LLMConfigError, match="FC_NO_SUCH_KEY"):
        Rewriter(llm_cfg(llm_server, tmp_path, api_key_env="FC_NO_SUCH_KEY"))


@pytest.mark.parametrize("mode, error", [("500", "HTTP 500"), ("slow", "timeout"), ("badjson", "bad JSON")])
def test_llm_failures_are_recorded_and_retried_later(llm_server, tmp_path, mode, error):
    cfg = llm_cfg(llm_server, tmp_path)
    llm_server.mode = lambda text: mode if "fail" in text else "ok"
    texts = ["She smiles.", "She fails to smile.", "He wears a hat."]
    out = Rewriter(cfg).rewrite(texts)
    assert out[0] == ("REWRITTEN: She smiles.", None) and out[2][0] == "REWRITTEN: He wears a hat."
    assert out[1][0] is None and error in out[1][1]
    assert sum(r["text"] == texts[1] for r in llm_server.requests) == 2  # one retry
    llm_server.mode = "ok"  # the server recovers: only the failed caption is sent again
    n = len(llm_server.requests)
    out2 = Rewriter(cfg).rewrite(texts)
    assert out2[1] == ("REWRITTEN: She fails to smile.", None) and len(llm_server.requests) == n + 1


def test_llm_resumes_after_a_kill(llm_server, tmp_path):
    cfg = llm_cfg(llm_server, tmp_path)
    texts = [f"caption {i}." for i in range(5)]
    Rewriter(cfg).rewrite(texts[:3])
    cache = next((tmp_path / "cache").rglob("*.jsonl"))
    with open(cache, "a") as f:
        f.write('{"k": "abc", "in": "caption 3.", "ou')  # a line cut short by a kill
    n = len(llm_server.requests)
    out = Rewriter(cfg).rewrite(texts)
    assert len(llm_server.requests) == n + 2 and all(o is not None for o, _ in out)
    assert Rewriter(cfg).rewrite(texts) == out  # the cache is still readable after the torn line


def test_llm_cache_is_per_shard_and_reads_only_what_it_needs(llm_server, tmp_path):
    """Each shard has its own cache file; a job reads only its shard's file and keeps only the entries it asks
    for, so its memory does not grow with the other shards' cache; an old shared cache seeds a shard once."""
    cfg = llm_cfg(llm_server, tmp_path)
    a_texts = [f"A face {i}." for i in range(4)]
    out_a = Rewriter(cfg, shard="00000").rewrite(a_texts)
    # a big cache of another shard, written the way a job writes it
    other = Rewriter(cfg, shard="00001")
    other._append([(f"other caption {i}.", f"R{i}") for i in range(5000)])
    files = sorted(p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*.jsonl"))
    assert len(files) == 2 and files[0].endswith("/00000.jsonl") and files[1].endswith("/00001.jsonl")
    n = len(llm_server.requests)
    again = Rewriter(cfg, shard="00000")
    assert again.rewrite(a_texts[:2]) == out_a[:2] and len(llm_server.requests) == n and again.sent == 0
    assert again.lines_read == 4 and len(again.cache) == 2  # its own file only, and only the entries it needs
    # the same text in another shard is sent once for that shard (shards do not read each other's caches)
    third = Rewriter(cfg, shard="00002")
    assert third.rewrite(a_texts[:1]) == out_a[:1] and third.sent == 1 and third.lines_read == 0

    # an old shared cache (one file for all shards) seeds a shard's file once, with the entries it needs
    legacy = other.cache_path.parent.with_suffix(".jsonl")
    legacy.write_text("".join(json.dumps({"k": hashlib.sha256(f"old {i}.".encode()).hexdigest(), "in": f"old {i}.",
                                          "out": f"OLD {i}"}) + "\n" for i in range(100)) + '{"k": "torn', )
    seeded = Rewriter(cfg, shard="00003")
    n = len(llm_server.requests)
    assert seeded.rewrite(["old 7.", "old 9.", "new."]) == [("OLD 7", None), ("OLD 9", None), ("REWRITTEN: new.", None)]
    assert len(llm_server.requests) == n + 1 and seeded.lines_read == 101 + 2
    again = Rewriter(cfg, shard="00003")
    assert again.rewrite(["old 7.", "new."]) == [("OLD 7", None), ("REWRITTEN: new.", None)] and again.sent == 0
    assert again.lines_read == 3  # the old file is not read again: the shard's file has what it needs


def test_captions_stage_with_llm(workdir, llm_server, tmp_path):
    adf = make_inputs(8)
    llm_server.mode = lambda text: "500" if text.startswith("The man") or text.startswith("This man") else "ok"
    cfg = stage_config(captions={"llm": {"enabled": True, "base_url": llm_server.url, "timeout_s": 2, "retries": 0,
                                         "cache_dir": str(tmp_path / "cache")}})
    assert run_stage("captions", cfg, "00000") == 0
    df = read_parquet("results/captions/00000.parquet")
    assert len(df) == int(adf.kept.sum())
    ok = df[df.rewritten]
    bad = df[~df.rewritten]
    assert (ok["caption"] == "REWRITTEN: " + ok["grammar_caption"]).all() and ok["rewrite_error"].isna().all()
    assert (bad["caption"] == bad["grammar_caption"]).all() and (bad["rewrite_error"] == "HTTP 500").all()
    txt = {s["__key__"]: s["txt"].decode() for s in iter_samples("results/captions/00000.tar")}
    assert txt == dict(zip(df["key"], df["caption"]))
