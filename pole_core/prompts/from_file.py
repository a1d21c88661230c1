"""POLE selections read from a file instead of chosen from the baseline CAMs (``prompts.source: file``).

The released POLE code ships its per-image choices as ``GPT_v2_4.json``: despite the name a
Python pickle (protocol 2) of ``{image_id: ["a photo of plane.", "a photo of human.", ...]}``,
one prompt per present class in class order, ids without the underscore (``2007000032``).
:func:`read_prompt_file` reads that pickle (plain dicts, lists and strings only, nothing
else is unpickled) or the same mapping as JSON; :func:`selections_from_file` maps every
prompt onto the class bank and returns what :func:`pole_core.prompts.select.select_prompts`
returns, so the rest of the pipeline cannot tell the two sources apart.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pole_core.io.atomic import reading

from .select import Histogram, Selected, _candidate_lists


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only the built-in containers and strings (no globals, so no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} not allowed in a prompt file")


def read_prompt_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{image_id: [prompt, ...]}`` from a JSON file or the released POLE pickle."""
    path = Path(path)
    with reading(path, "prompt file"):
        raw = path.read_bytes()
    try:
        if raw[:1] == b"\x80":  # pickle protocol >= 2
            doc = _PlainUnpickler(io.BytesIO(raw)).load()
        else:
            doc = json.loads(raw.decode("utf-8"))
    except Exception as err:  # json/pickle/unicode raise several types
        raise ValueError(
            f"{path}: not a prompt file, JSON or POLE pickle ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(doc, dict):
        raise ValueError(
            f"{path}: not a prompt file (top level is {type(doc).__name__}, not a map)"
        )
    out: dict[str, list[str]] = {}
    for key, prompts in doc.items():
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{path}: image {key!r}: prompts must be a list of strings")
        out[str(key)] = prompts
    return out


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def prompt_token(prompt: str, template: str = "A photo of {}.") -> str:
    """The class token of a prompt: ``"A photo of Dinner Table ."`` -> ``"dinner table"``.

    Case, runs of spaces and a trailing period do not matter. The prefix is the template's
    or the released files' "a photo of"; a string with neither is taken as the token itself.
    """
    head, _, tail = template.partition("{}")
    text = _norm(prompt)
    tail = _norm(tail).rstrip(".").strip()
    for prefix in (_norm(head), "a photo of"):
        if prefix and text.startswith(prefix + " "):
            text = text[len(prefix) + 1 :]
            break
    text = text.rstrip(". ").strip()
    if tail and text.endswith(tail):
        text = text[: -len(tail)].strip()
    return text


def _split_id(key: str, split: set[str]) -> str | None:
    """The split id a file key names: itself, or IRNet's integer form (2007000032 -> 2007_000032)."""
    if key in split:
        return key
    if re.fullmatch(r"\d{5,}", key):
        alt = f"{key[:4]}_{key[4:]}"
        if alt in split:
            return alt
    return None


def selections_from_file(
    path: str | os.PathLike,
    dataset: Any,
    ids: Sequence[str],
    split_ids: Sequence[str],
    candidates: Mapping[str, Sequence[str]],
    *,
    template: str = "A photo of {}.",
    split: str = "train",
) -> tuple[Selected, Histogram]:
    """``(selected, histogram)`` as :func:`~pole_core.prompts.select.select_prompts` gives,
    from a per-image prompt file.

    Each prompt's token is looked up among the candidates of all classes (case-insensitive);
    a token that is a candidate of several classes ("bike": bicycle, motorbike) goes to the
    one in the image's label, then to the one its other prompts leave free, then in class
    order (the released file lists one prompt per present class in class order). ``ids``
    are the images written (every one must be in the file, each labelled class with one
    prompt); every file id must be in ``split_ids``. Any problem is one ``ValueError`` line
    naming the file, the image and the prompt.
    """
    path = Path(path)
    names = list(dataset.class_names)
    cands = _candidate_lists(names, candidates)
    owners: dict[str, list[int]] = {}
    canonical: dict[tuple[str, int], str] = {}
    for k, name in enumerate(names):
        for token in cands[name]:
            key = _norm(token)
            if k not in owners.setdefault(key, []):
                owners[key].append(k)
                canonical[key, k] = token

    doc = read_prompt_file(path)
    in_split = set(split_ids)
    by_id: dict[str, tuple[str, list[tuple[str, list[int]]]]] = {}
    for key, prompts in doc.items():
        parsed = []
        for prompt in prompts:
            token = prompt_token(prompt, template)
            if token not in owners:
                raise ValueError(
                    f"{path}: image {key!r}: prompt {prompt!r} names no candidate of any class "
                    f"(token {token!r})"
                )
            parsed.append((prompt, owners[token]))
        image_id = _split_id(key, in_split)
        if image_id is None:
            first = f" (prompt {prompts[0]!r})" if prompts else ""
            raise ValueError(f"{path}: image {key!r}{first} is not in the {split} split list")
        if image_id in by_id:
            raise ValueError(
                f"{path}: image {key!r} is listed twice (also as {by_id[image_id][0]!r})"
            )
        by_id[image_id] = (key, parsed)

    selected: Selected = {}
    histogram: Histogram = {name: dict.fromkeys(cands[name], 0) for name in names}
    for image_id in ids:
        if image_id not in by_id:
            raise ValueError(f"{path}: no prompts for image {image_id!r} of the {split} split")
        key, parsed = by_id[image_id]
        present = {int(k) for k in np.flatnonzero(np.asarray(dataset.labels(image_id)) > 0)}
        label = ", ".join(names[k] for k in sorted(present))
        options = []
        for prompt, classes in parsed:
            fits = [k for k in classes if k in present]
            if not fits:
                raise ValueError(
                    f"{path}: image {key!r}: prompt {prompt!r} names "
                    f"{' or '.join(names[k] for k in classes)}, not in the image's label ({label})"
                )
            options.append(fits)
        chosen = _assign(options)
        seen: dict[int, str] = {}
        for (prompt, _), k in zip(parsed, chosen, strict=True):
            if k in seen:
                raise ValueError(
                    f"{path}: image {key!r}: prompts {seen[k]!r} and {prompt!r} both name {names[k]}"
                )
            seen[k] = prompt
        missing = sorted(present - set(seen))
        if missing:
            raise ValueError(
                f"{path}: image {key!r}: no prompt for labelled class {names[missing[0]]} "
                f"(prompts {[p for p, _ in parsed]})"
            )
        tokens = {}
        for (prompt, _), k in sorted(zip(parsed, chosen, strict=True), key=lambda pk: pk[1]):
            token = canonical[prompt_token(prompt, template), k]
            tokens[names[k]] = token
            histogram[names[k]][token] += 1
        selected[image_id] = tokens
    return selected, histogram


def _assign(options: list[list[int]]) -> list[int]:
    """One class per prompt: unique options first, then by elimination, then in class order."""
    chosen: list[int | None] = [o[0] if len(o) == 1 else None for o in options]
    changed = True
    while changed:
        changed = False
        taken = {k for k in chosen if k is not None}
        for i, o in enumerate(options):
            if chosen[i] is None:
                free = [k for k in o if k not in taken]
                if len(free) == 1:
                    chosen[i] = free[0]
                    changed = True
                    taken.add(free[0])
    for i, o in enumerate(options):
        if chosen[i] is None:
            taken = {k for k in chosen if k is not None}
            free = [k for k in o if k not in taken] or o
            chosen[i] = min(free)
    return [int(k) for k in chosen]
