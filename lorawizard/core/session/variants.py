"""`[[train.variants]]`: runs that differ from the base run in a few keys ("same, but network_dim 16").

    [[train.variants]]
    name = "dim16"          # a safe file-name stem, unique; the run's output name is `<name>-dim16`
    network_dim = 16        # any key of [train] (not the samples table), and `num_repeats` (dataset.num_repeats)

This module reads and checks the entries; it imports nothing of the document (which hands it the schema, as
sections.py is handed it), so document.py can call it while validating. Running them is core/train/queue.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

VARIANTS_KEY = "train.variants"
BASE = "base"  # the base run's label in a queue; no variant may take it
RESERVED_NAMES = frozenset({BASE, "variants", "machines"})  # folders of paths.runs, and the base run's label
# a variant key outside [train]: its short name in the variant table → the schema key it changes
OTHER_KEYS = {"num_repeats": "dataset.num_repeats"}
NOT_PER_VARIANT = frozenset({"train.variants"})
VARIANT_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,39}")
RUN_ID_LIKE = re.compile(r"\d{8}-\d{6}.*")  # paths.runs' own run folders


class VariantProblem(Exception):
    """One bad entry: `index` (0-based) and `key` locate it in the file; str() is the one-line reason."""

    def __init__(self, message: str, index: int, key: str = "name") -> None:
        super().__init__(message)
        self.index, self.key = index, key


class Variant(NamedTuple):
    name: str
    changes: dict[str, Any]  # schema key ("train.network_dim") → value, in the order written

    def describe(self) -> str:
        """`network_dim 16, base_precision 16bit` (what differs from the base run)."""
        if not self.changes:
            return "same as the base run"
        return ", ".join(f"{short_key(key)} {_show(value)}" for key, value in self.changes.items())


def short_key(key: str) -> str:
    """The key as a variant table writes it: `train.network_dim` → `network_dim`."""
    for short, full in OTHER_KEYS.items():
        if key == full:
            return short
    return key.removeprefix("train.")


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def variant_keys(schema_keys: list[str] | Mapping[str, Any]) -> dict[str, str]:
    """What a variant table may set: short key → schema key (every plain key of [train], plus OTHER_KEYS)."""
    keys = {key.removeprefix("train."): key for key in schema_keys
            if key.startswith("train.") and key.count(".") == 1 and key not in NOT_PER_VARIANT}
    keys.update(OTHER_KEYS)
    return keys


def variant_name_problem(name: Any, base_name: str) -> str | None:
    if not isinstance(name, str) or not name:
        return "needs a `name`: a short file-name stem such as \"dim16\""
    if VARIANT_NAME_RE.fullmatch(name) is None:
        return (f"name {name!r}: use letters, digits, '-' and '_' (at most 40, not starting with '-'); it becomes "
                "part of a file name")
    if name.lower() in RESERVED_NAMES or RUN_ID_LIKE.fullmatch(name):
        return f"name {name!r} is reserved (it names the base run or a folder of paths.runs); pick another"
    if len(f"{base_name}-{name}") > 100:
        return f"name {name!r}: `{base_name}-{name}` is longer than a LoRA name may be (100)"
    return None


def parse_variants(
    value: Any,
    *,
    schema_keys: list[str] | Mapping[str, Any],
    value_problem: Callable[[str, Any], str | None],
    base_name: str,
) -> list[Variant]:
    """The entries of `[[train.variants]]`, checked. Raises VariantProblem (one line, with index and key) on the first
    bad one: not a table, a bad or duplicate name, a key that is not a [train] key (naming the closest), a bad value.
    `value_problem(schema_key, value)` is the schema's own check ("an integer from 1 to 4096"), None when fine."""
    if not isinstance(value, list):
        raise VariantProblem("train.variants: expected [[train.variants]] tables, each with a name", 0)
    allowed = variant_keys(schema_keys)
    seen: dict[str, int] = {}
    variants = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise VariantProblem(f"train.variants[{index}]: expected a table with a name and the keys that differ",
                                 index)
        problem = variant_name_problem(entry.get("name"), base_name)
        if problem is not None:
            raise VariantProblem(f"train.variants[{index}]: {problem}", index)
        name = str(entry["name"])
        if name.lower() in seen:
            raise VariantProblem(f"train.variants[{index}]: name {name!r} is used twice (also entry {seen[name.lower()]}"
                                 "); each variant needs its own name (it names its runs and LoRA files)", index)
        seen[name.lower()] = index
        changes: dict[str, Any] = {}
        for key, item in entry.items():
            if key == "name":
                continue
            full = allowed.get(key)
            if full is None:
                import difflib  # only for the message: not on the first frame's path

                close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
                hint = f"; did you mean `{close[0]}`?" if close else " (a variant sets keys of [train], or num_repeats)"
                raise VariantProblem(f"train.variants {name!r}: `{key}` is not a [train] key{hint}", index, key)
            if isinstance(item, dict):
                raise VariantProblem(f"train.variants {name!r}: `{key}`: expected a value, got a table", index, key)
            problem = value_problem(full, item)
            if problem is not None:
                raise VariantProblem(f"train.variants {name!r}: {key}: expected {problem}, got {item!r}", index, key)
            changes[full] = item
        variants.append(Variant(name, changes))
    return variants


def same_as_base(variant: Variant, base_value: Callable[[str], Any]) -> bool:
    """Every key the variant sets has the base run's value already: it would train the same LoRA again."""
    return all(base_value(key) == value for key, value in variant.changes.items())


def identical_warning(variant: Variant) -> str:
    return (f"train.variants {variant.name!r} sets nothing the base run does not already have: it would train the "
            "same LoRA again")


# ------------------------------------------------------------------ "same, but: network_dim 16" → a Variant

# Phrases a person types for a key and its value ("a 16-bit base"), before `key value` pairs are read.
PHRASES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"(?:an?\s+)?(?:16[- ]?bit|bf16|fp16)\s+base", re.I), "base_precision", "16bit"),
    (re.compile(r"(?:an?\s+)?fp8\s+base", re.I), "base_precision", "fp8"),
)
# short words for a default name: network_dim 16 → dim16, learning_rate 0.0002 → lr0p0002
NAME_WORDS = {"network_dim": "dim", "learning_rate": "lr", "max_train_epochs": "ep", "num_repeats": "rep",
              "save_every_n_epochs": "save", "base_precision": "", "optimizer_type": "", "mixed_precision": "mp",
              "validation_split": "val"}
_SAME_BUT = re.compile(r"^\s*same\s*,?\s*but\s*:?\s*", re.I)
_NAMED = re.compile(r"^\s*([^\s:,=]+)\s*:\s*(.*)$", re.S)
_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def variant_from_text(text: str, *, kinds: Mapping[str, str], taken: list[str] | tuple[str, ...] = (),
                      base_name: str = "") -> Variant:
    """What a person typed after "same, but:" → a Variant (its values typed by the schema's `kinds`: schema key →
    "int", "float", "bool", "str", "str_list", …). Forms: `network_dim 16, learning_rate 2e-4` (a name made from
    them: "dim16-lr0p0002", unique among `taken`), `hi: network_dim 16` (named), `key=value`, "a 16-bit base".

    Raises ValueError (one line) only for text that has no `key value` shape; a key that is not a variant key, or a
    value the schema refuses, is kept as typed so that `Session.set_variants` says why (naming the closest key)."""
    body = _SAME_BUT.sub("", text.strip(), count=1).strip()
    allowed = variant_keys(list(kinds))
    name: str | None = None
    named = _NAMED.match(body)
    if named and named.group(1).removeprefix("train.").removeprefix("dataset.") not in allowed:
        name, body = named.group(1), named.group(2)  # `name: key value` (not `network_dim: 16`)
    changes: dict[str, Any] = {}
    for part in (p.strip() for p in body.split(",")):
        if not part:
            continue
        phrase = next(((key, value) for pattern, key, value in PHRASES if pattern.fullmatch(part)), None)
        if phrase is not None:
            key, raw = phrase
        else:
            pieces = re.split(r"\s*[=:]\s*|\s+", part, maxsplit=1)
            if len(pieces) < 2 or not pieces[1].strip():
                raise ValueError(f"`{pieces[0]}` needs a value after it, e.g. `network_dim 16`")
            key, raw = pieces[0], pieces[1].strip()
        key = key.removeprefix("train.").removeprefix("dataset.")
        full = allowed.get(key, key)  # an unknown key as typed: set_variants names it and the closest one
        changes[full] = _typed(kinds.get(full, "str"), raw)
    if not changes:
        raise ValueError("type what differs from the base run, e.g. `network_dim 16` or `dim16: network_dim 16, "
                         "learning_rate 2e-4`")
    if name is None:
        name = default_name(changes, taken, base_name)
    return Variant(name, changes)


def _typed(kind: str, raw: str) -> Any:
    """The typed text as the schema's kind, or the text itself when it is not one (the schema then says why)."""
    text = raw.strip().strip("\"'")
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        return text
    if kind == "bool":
        return _BOOLS.get(text.lower(), text)
    if kind == "str_list":
        import shlex

        try:
            return shlex.split(raw)
        except ValueError:
            return text
    return text


def default_name(changes: Mapping[str, Any], taken: list[str] | tuple[str, ...] = (), base_name: str = "") -> str:
    """A safe, unique stem from the changes: `network_dim 16` → "dim16", `base_precision 16bit` → "16bit"."""
    parts = []
    for key, value in changes.items():
        short = short_key(key)
        shown = f"{value:g}" if isinstance(value, float) else _show(value)
        word = NAME_WORDS.get(short, short)
        parts.append(re.sub(r"[^A-Za-z0-9_-]+", "", f"{word}{shown.replace('.', 'p')}".replace("+", "")))
    stem = "-".join(p for p in parts if p)[:36].strip("-") or "variant"
    if variant_name_problem(stem, base_name) is not None:  # "base", a run id's shape
        stem = f"v-{stem}"[:36].strip("-")
    used = {t.lower() for t in taken}
    name, number = stem, 2
    while name.lower() in used:
        name, number = f"{stem}-{number}", number + 1
    return name
