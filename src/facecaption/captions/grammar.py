"""The caption grammar: loading and checking the data file, compiling it once, and sampling captions fast.

The grammar (``grammar.yaml`` beside this module, format documented at its top) is a probabilistic
context-free grammar whose nonterminals may have per-gender variants; it is compiled into one flat table
per gender (male / female / person) of alternatives with cumulative weights, so sampling a caption is list
indexing and string joins, no YAML or regex work. ``Generator.caption`` returns the text and what it states:
``(attribute, value)`` pairs, so every statement can be checked against the face's kept labels.
"""

from __future__ import annotations

import random
import re
from bisect import bisect
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import yaml

from facecaption.core.celeba import ATTRIBUTES, GROUPS

GENDERS = ("male", "female", "person")
_NT = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")
_SETTINGS = {"order": list, "shuffle": bool, "max_phrases": int, "p_negation": (int, float),
             "first_subject": str, "merge_verbs": bool}
_TOP = ("version", "settings", "rules", "groups", "present", "absent")


class GrammarError(ValueError):
    """A malformed grammar file; the message starts with ``file:line:``."""


def default_path() -> Path:
    return Path(str(resources.files("facecaption") / "captions" / "grammar.yaml"))


# ---------------------------------------------------------------------------------------------------------
# loading with line numbers
# ---------------------------------------------------------------------------------------------------------
class _Src:
    """Plain data from a YAML file plus the line of every node (keyed by its path)."""

    def __init__(self, path: str):
        self.path = path
        text = Path(path).read_text(encoding="utf-8")
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            raise GrammarError(f"{path}:{line}: not valid YAML: {exc.problem or exc}") from None
        self.lines: dict[tuple, int] = {}
        self.data = self._plain(node, ()) if node is not None else {}

    def _plain(self, node, where: tuple):
        self.lines[where] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out = {}
            for k, v in node.value:
                key = yaml.SafeLoader(k.value).construct_object(k) if False else k.value  # keys are plain strings
                if key in out:
                    raise GrammarError(f"{self.path}:{k.start_mark.line + 1}: duplicate key {key!r}")
                self.lines[where + (key, "__key__")] = k.start_mark.line + 1
                out[key] = self._plain(v, where + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._plain(v, where + (i,)) for i, v in enumerate(node.value)]
        loader = yaml.SafeLoader("")
        return loader.construct_object(node)

    def err(self, where: tuple, msg: str) -> GrammarError:
        w = where
        while w and w not in self.lines:
            w = w[:-1]
        return GrammarError(f"{self.path}:{self.lines.get(w, 1)}: {msg}")


# ---------------------------------------------------------------------------------------------------------
# compiled grammar
# ---------------------------------------------------------------------------------------------------------


def _alternatives(src: _Src, where: tuple, value, allow_empty: bool = False) -> list[tuple[float, str]]:
    if not isinstance(value, list):
        raise src.err(where, "expected a list of alternatives (strings or [weight, string])")
    if not value and not allow_empty:
        raise src.err(where, "empty list of alternatives")
    out = []
    for i, alt in enumerate(value):
        w = where + (i,)
        if isinstance(alt, str):
            out.append((1.0, alt))
        elif (isinstance(alt, list) and len(alt) == 2 and isinstance(alt[0], (int, float))
              and not isinstance(alt[0], bool) and isinstance(alt[1], str)):
            if not alt[0] > 0:
                raise src.err(w, f"weight {alt[0]!r} must be > 0")
            out.append((float(alt[0]), alt[1]))
        else:
            raise src.err(w, f"alternative {alt!r} is not a string or [weight, string]")
        if "{" in out[-1][1].replace("{phrases}", "") or "}" in out[-1][1].replace("{phrases}", ""):
            raise src.err(w, f"unknown slot in {out[-1][1]!r}; the only slot is {{phrases}}")
    return out


def _parse(text: str) -> tuple:
    """A template string → tuple of parts (literal strings and (name,) nonterminals)."""
    parts: list = []
    pos = 0
    for m in _NT.finditer(text):
        if m.start() > pos:
            parts.append(text[pos:m.start()])
        parts.append((m.group(1),))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)


def _split_gender(name: str) -> tuple[str, str | None]:
    base, _, g = name.partition("@")
    return base, (g or None)


class Grammar:
    """A checked, compiled grammar. ``Grammar.load(path)`` raises ``GrammarError`` naming the line.

    Building one reads and checks each part of the file in turn (top level, settings, rules, groups, attribute
    phrases), then every reference between them, then compiles one table per gender; the first problem found
    stops it, in that order."""

    def __init__(self, src: _Src):
        self.path = src.path
        data = self._check_top(src)
        self._read_settings(src, dict(data.get("settings") or {}))
        # where each rule and phrase list is in the file: (name, gender) / ("present:Attr", gender) -> node path
        lines: dict[tuple, tuple] = {}
        raw = self._read_rules(src, data.get("rules") or {}, lines)
        self.group_templates = self._read_groups(src, data.get("groups") or {})
        phrases = self._read_phrases(src, data, lines)
        self._check_references(src, raw, phrases, lines)
        self._check_cycles(raw, src, lines)
        self._check_complete(src, phrases)
        # flatten: the grammar is acyclic, so every nonterminal's language is a finite distribution over
        # strings; sampling is then one weighted draw per phrase and per sentence
        self._raw = raw
        self._lang_cache: dict = {}
        self.compiled: dict[str, dict] = {gender: self._compile_gender(gender, phrases, src, lines)
                                          for gender in GENDERS}

    # -- reading and checking the parts of the file --------------------------------------------------------
    @staticmethod
    def _check_top(src: _Src) -> dict:
        """The file's top-level mapping: known keys only, version 1."""
        data = src.data
        if not isinstance(data, dict):
            raise src.err((), "the grammar must be a mapping with keys " + ", ".join(_TOP))
        for key in data:
            if key not in _TOP:
                raise src.err((key, "__key__"), f"unknown key {key!r}; known: {', '.join(_TOP)}")
        if data.get("version") != 1:
            raise src.err(("version",), f"version must be 1, found {data.get('version')!r}")
        return data

    def _read_settings(self, src: _Src, settings: dict) -> None:
        """``settings``: known keys of the right types and ranges, defaults filled in."""
        for k, v in settings.items():
            if k not in _SETTINGS:
                raise src.err(("settings", k, "__key__"), f"unknown setting {k!r}; known: {', '.join(_SETTINGS)}")
            if not isinstance(v, _SETTINGS[k]) or (isinstance(v, bool) and _SETTINGS[k] is not bool):
                raise src.err(("settings", k), f"setting {k}: {v!r} has the wrong type")
        self.order = list(settings.get("order", list(GROUPS)))
        for i, g in enumerate(self.order):
            if g not in GROUPS:
                raise src.err(("settings", "order", i), f"unknown group {g!r}; known: {', '.join(GROUPS)}")
        self.shuffle = bool(settings.get("shuffle", True))
        self.max_phrases = int(settings.get("max_phrases", 3))
        if self.max_phrases < 1:
            raise src.err(("settings", "max_phrases"), "max_phrases must be >= 1")
        self.p_negation = float(settings.get("p_negation", 0.5))
        if not 0 <= self.p_negation <= 1:
            raise src.err(("settings", "p_negation"), "p_negation must be within [0, 1]")
        self.first_subject = settings.get("first_subject")
        self.merge_verbs = bool(settings.get("merge_verbs", True))

    @staticmethod
    def _read_rules(src: _Src, rules, lines: dict) -> dict[str, dict]:
        """``rules`` as name -> {gender or None: [(weight, text)]}; records where each variant is."""
        if not isinstance(rules, dict):
            raise src.err(("rules",), "rules must be a mapping of nonterminal names to alternatives")
        raw: dict[str, dict] = {}
        for name, alts in rules.items():
            base, g = _split_gender(name)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", base) or (g is not None and g not in GENDERS):
                raise src.err(("rules", name, "__key__"), f"bad nonterminal name {name!r} (Name or Name@male|female|person)")
            raw.setdefault(base, {})[g] = _alternatives(src, ("rules", name), alts)
            lines[(base, g)] = ("rules", name)
        return raw

    @staticmethod
    def _read_groups(src: _Src, groups) -> dict[str, dict]:
        """``groups`` as group -> {"sentence": [(weight, text)], "bare": [(weight, text)]}."""
        if not isinstance(groups, dict):
            raise src.err(("groups",), "groups must be a mapping")
        return {gname: Grammar._read_group(src, gname, spec) for gname, spec in groups.items()}

    @staticmethod
    def _read_group(src: _Src, gname: str, spec) -> dict:
        """One group: its sentences (each with the ``{phrases}`` slot) and bare sentences (without)."""
        if gname not in GROUPS:
            raise src.err(("groups", gname, "__key__"), f"unknown group {gname!r}; known: {', '.join(GROUPS)}")
        if not isinstance(spec, dict) or "sentence" not in spec:
            raise src.err(("groups", gname), f"group {gname}: needs a 'sentence' list")
        for k in spec:
            if k not in ("sentence", "bare"):
                raise src.err(("groups", gname, k, "__key__"), f"group {gname}: unknown key {k!r}; known: sentence, bare")
        sent = _alternatives(src, ("groups", gname, "sentence"), spec["sentence"])
        for i, (_, t) in enumerate(sent):
            if "{phrases}" not in t:
                raise src.err(("groups", gname, "sentence", i), f"sentence {t!r} lacks the {{phrases}} slot")
        bare = _alternatives(src, ("groups", gname, "bare"), spec["bare"]) if "bare" in spec else []
        for i, (_, t) in enumerate(bare):
            if "{phrases}" in t:
                raise src.err(("groups", gname, "bare", i), "a bare sentence has no {phrases} slot")
        return {"sentence": sent, "bare": bare}

    @staticmethod
    def _read_phrases(src: _Src, data: dict, lines: dict) -> dict[tuple[str, int], dict]:
        """``present`` and ``absent`` as (attribute, 1 | 0) -> {gender or None: [(weight, text)]}."""
        phrases: dict[tuple[str, int], dict] = {}
        for section, value in (("present", 1), ("absent", 0)):
            table = data.get(section) or {}
            if not isinstance(table, dict):
                raise src.err((section,), f"{section} must be a mapping of attribute names to phrases")
            for name, alts in table.items():
                attr, g = _split_gender(str(name))
                if attr not in ATTRIBUTES:
                    raise src.err((section, name, "__key__"), f"unknown attribute {attr!r} (the 40 CelebA names)")
                if g is not None and g not in GENDERS:
                    raise src.err((section, name, "__key__"), f"unknown gender {g!r}; one of {', '.join(GENDERS)}")
                phrases.setdefault((attr, value), {})[g] = _alternatives(src, (section, name), alts, allow_empty=True)
                lines[(f"{section}:{attr}", g)] = (section, name)
                for i, (_, t) in enumerate(phrases[(attr, value)][g]):
                    if "{phrases}" in t:
                        raise src.err((section, name, i), "a phrase has no {phrases} slot")
        return phrases

    # -- checks across the parts ------------------------------------------------------------------------------
    def _check_references(self, src: _Src, raw: dict, phrases: dict, lines: dict) -> None:
        """Every ``<Name>`` in rules, sentences and phrases (and ``first_subject``) is defined for every gender."""
        if self.first_subject is not None and self.first_subject not in raw:
            raise src.err(("settings", "first_subject"), f"unknown nonterminal <{self.first_subject}>")
        defined = {g: {base for base, v in raw.items() if g in v or None in v} for g in GENDERS}

        def check_refs(text: str, where: tuple) -> None:
            for m in _NT.finditer(text):
                name = m.group(1)
                for gender in GENDERS:
                    if name not in defined[gender]:
                        raise src.err(where, f"unknown nonterminal <{name}>" +
                                      (f" for gender {gender}" if name in raw else ""))

        for base, variants in raw.items():
            for g, alts in variants.items():
                for i, (_, t) in enumerate(alts):
                    check_refs(t, lines[(base, g)] + (i,))
        for gname, tmpl in self.group_templates.items():
            for kind in ("sentence", "bare"):
                for i, (_, t) in enumerate(tmpl[kind]):
                    check_refs(t, ("groups", gname, kind, i))
        for (attr, value), variants in phrases.items():
            for g, alts in variants.items():
                for i, (_, t) in enumerate(alts):
                    check_refs(t, lines[(f"{'present' if value else 'absent'}:{attr}", g)] + (i,))

    def _check_complete(self, src: _Src, phrases: dict) -> None:
        """Every ordered group has sentences, every attribute has (possibly no) phrases under ``present``."""
        for i, g in enumerate(self.order):
            if g not in self.group_templates:
                raise src.err(("settings", "order", i), f"group {g!r} is ordered but has no entry under groups")
        missing = [a for a in ATTRIBUTES if (a, 1) not in phrases]
        if missing:
            raise src.err(("present",), f"no phrases for attribute {missing[0]!r} under present "
                                        "(an empty list [] says: never state it)")

    # -- compiling -------------------------------------------------------------------------------------------
    def _compile_gender(self, gender: str, phrases: dict, src: _Src, lines: dict) -> dict[str, tuple]:
        """The table of one gender: group -> (members, sentence, first sentence, bare sentence)."""
        return {gname: self._compile_group(gender, gname, phrases, src, lines) for gname in self.order}

    def _compile_group(self, gender: str, gname: str, phrases: dict, src: _Src, lines: dict) -> tuple:
        members = []
        for attr in GROUPS[gname]:
            pair = [self._compile_phrase(gender, attr, value, phrases, src, lines) for value in (1, 0)]
            if pair[0] is not None or pair[1] is not None:
                members.append((attr, pair[0], pair[1]))
        tmpl = self.group_templates[gname]
        where = ("groups", gname, "sentence")
        sent = self._flat_sentence(self._flatten(tmpl["sentence"], gender, src, where))
        first = sent
        if self.first_subject:
            alts = [(w, t.replace("<Subj>", f"<{self.first_subject}>")) for w, t in tmpl["sentence"]]
            first = self._flat_sentence(self._flatten(alts, gender, src, where))
        bare = None
        if tmpl["bare"]:
            fl = self._flatten(tmpl["bare"], gender, src, ("groups", gname, "bare"))
            bare = (fl[0], fl[1], tuple(_cap(t) for t in fl[2]), fl[3])
        return (tuple(members), sent, first, bare)

    def _compile_phrase(self, gender: str, attr: str, value: int, phrases: dict, src: _Src,
                        lines: dict) -> tuple | None:
        """The phrase choice stating ``attr = value`` for ``gender`` (its own variant, else the common one);
        None when there is nothing to say."""
        variants = phrases.get((attr, value), {})
        alts = variants.get(gender, variants.get(None))
        if not alts:
            return None
        sec = "present" if value else "absent"
        where = lines[(f"{sec}:{attr}", gender if gender in variants else None)]
        return self._flat_phrase(self._flatten(alts, gender, src, where), negated=not value)

    _MAX_EXPANSIONS = 20000

    def _lang(self, name: str, gender: str, src: _Src) -> list[tuple[float, str, bool]]:
        """The distribution of strings nonterminal ``name`` produces for ``gender``: [(prob, text, gendered)]."""
        key = (name, gender)
        if key not in self._lang_cache:
            variants = self._raw[name]
            g = gender if gender in variants else None
            gendered = g in ("male", "female")
            flat = self._flatten(variants[g], gender, src, ("rules", name if g is None else f"{name}@{g}"))
            out, prev = [], 0.0
            for c, t, gd in zip(flat[0], flat[2], flat[3]):
                out.append(((c - prev) / flat[1], t, gd or gendered))
                prev = c
            self._lang_cache[key] = out
        return self._lang_cache[key]

    def _flatten(self, alts: list[tuple[float, str]], gender: str, src: _Src, where: tuple) -> tuple:
        """Alternatives with nonterminals → (cumulative weights, total, texts, gendered flags), all expanded."""
        items: list[tuple[float, str, bool]] = []
        total_w = sum(w for w, _ in alts)
        for i, (w, text) in enumerate(alts):
            partial = [(w / total_w, "", False)]
            for part in _parse(text):
                if part.__class__ is str:
                    partial = [(p, t + part, gd) for p, t, gd in partial]
                else:
                    sub = self._lang(part[0], gender, src)
                    partial = [(p * q, t + u, gd or gu) for p, t, gd in partial for q, u, gu in sub]
                if len(partial) > self._MAX_EXPANSIONS:
                    raise src.err(where + (i,), f"{text!r} expands to more than {self._MAX_EXPANSIONS} strings")
            items.extend(partial)
        cum, acc = [], 0.0
        for p, _, _ in items:
            acc += p
            cum.append(acc)
        return (tuple(cum), acc, tuple(t for _, t, _ in items), tuple(gd for _, _, gd in items))

    @staticmethod
    def _flat_phrase(fl: tuple, negated: bool = False) -> tuple:
        """Phrase choice: (cum, total, texts, gendered, verbs, rests). A negation never shares its verb
        ("wears no hat" + "wears a tie" must not become "wears no hat and a tie")."""
        verbs, rests = [], []
        for t in fl[2]:
            verb, _, rest = t.partition(" ")
            verbs.append("!" + verb if negated else verb)
            rests.append(rest)
        return (*fl, tuple(verbs), tuple(rests))

    @staticmethod
    def _flat_sentence(fl: tuple) -> tuple:
        """Sentence choice: (cum, total, capitalised prefixes, gendered, suffixes, prefix-is-empty)."""
        pre, suf, empty = [], [], []
        for t in fl[2]:
            a, _, b = t.partition("{phrases}")
            pre.append(_cap(a))
            suf.append(b)
            empty.append(a == "")
        return (fl[0], fl[1], tuple(pre), fl[3], tuple(suf), tuple(empty))

    def _check_cycles(self, raw: dict, src: _Src, lines: dict) -> None:
        state: dict[str, int] = {}

        def visit(name: str, stack: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cyc = stack[stack.index(name):] + [name]
                g = next(iter(raw[name]))
                raise src.err(lines[(name, g)], "the rules loop: " + " → ".join(f"<{n}>" for n in cyc))
            state[name] = 1
            for alts in raw[name].values():
                for _, t in alts:
                    for m in _NT.finditer(t):
                        if m.group(1) in raw:
                            visit(m.group(1), stack + [name])
            state[name] = 2

        for name in raw:
            visit(name, [])

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Grammar":
        path = str(path or default_path())
        if not Path(path).exists():
            raise GrammarError(f"{path}:1: grammar file does not exist")
        return cls(_Src(path))


# ---------------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------------
def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def gender_of(labels: Mapping[str, int]) -> str:
    m = labels.get("Male", -1)
    return "male" if m == 1 else ("female" if m == 0 else "person")


_MERGE = frozenset(("has", "wears", "is", "looks"))


def _verb(part: tuple) -> str:
    return part[0]


class Generator:
    """Samples captions from a compiled grammar. Deterministic given the ``random.Random`` passed in."""

    def __init__(self, grammar: Grammar):
        self.g = grammar

    def caption(self, labels: Mapping[str, int], rnd: random.Random) -> tuple[str, list]:
        """One caption for a face's kept labels (attribute → 1 / 0 / -1; missing = not predicted).

        Returns (text, stated): every (attribute, value) fact the text states, gender included."""
        g = self.g
        m = labels.get("Male", -1)
        gender = "male" if m == 1 else ("female" if m == 0 else "person")
        comp = g.compiled[gender]
        rand = rnd.random
        order = g.order
        if g.shuffle and len(order) > 2:
            rest = order[1:]
            rnd.shuffle(rest)
            order = [order[0], *rest]
        stated: list = []
        said_gender = False
        sentences: list[str] = []
        p_neg, step, merge = g.p_negation, g.max_phrases, g.merge_verbs
        get = labels.get
        for gname in order:
            members, sent, first, bare = comp[gname]
            chosen = []
            for attr, pres, absn in members:
                v = get(attr, -1)
                if v == 1:
                    if pres is not None:
                        chosen.append((attr, 1, pres))
                elif v == 0 and absn is not None and rand() < p_neg:
                    chosen.append((attr, 0, absn))
            if not chosen:
                if bare is not None:
                    cum, total, texts, gendered = bare
                    i = bisect(cum, rand() * total) if len(texts) > 1 else 0
                    said_gender = said_gender or gendered[i]
                    sentences.append(texts[i])
                continue
            if len(chosen) > 1:
                rnd.shuffle(chosen)
            for s0 in range(0, len(chosen), step):
                chunk = chosen[s0:s0 + step]
                parts = []
                for attr, v, ch in chunk:
                    stated.append((attr, v))
                    cum, total, texts, gendered, verbs, rests = ch
                    i = bisect(cum, rand() * total) if len(texts) > 1 else 0
                    if gendered[i]:
                        said_gender = True
                    parts.append((verbs[i], texts[i], rests[i]))
                if merge and len(parts) > 1:
                    parts.sort(key=_verb)
                    words = []
                    prev = None
                    for verb, text, rest in parts:
                        if verb == prev and verb in _MERGE:
                            words.append(rest)
                        else:
                            words.append(text)
                            prev = verb
                else:
                    words = [p[1] for p in parts]
                plist = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
                cum, total, pre, gendered, suf, empty = first if not sentences else sent
                i = bisect(cum, rand() * total) if len(pre) > 1 else 0
                if gendered[i]:
                    said_gender = True
                sentences.append(pre[i] + _cap(plist) + suf[i] if empty[i] else pre[i] + plist + suf[i])
        if said_gender:
            stated.append(("Male", 1 if gender == "male" else 0))
        return " ".join(sentences), stated
