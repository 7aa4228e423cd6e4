"""Neuronpedia's public exports: explanations (`explanations/batch-N.jsonl.gz`), read and checked
line by line, and quick lists (a link that opens a list of latents on Neuronpedia).

An export line is one explanation of one latent: `modelId` and `layer` name the sae on Neuronpedia
(its id is MODEL/SOURCE, `layer` being the source, e.g. `12-gemmascope-res-16k`), `index` is the
latent's index as a string, `description` the explanation; `typeName` and `explanationModelName`
say how it was made. A latent may have several.
"""

from __future__ import annotations

import gzip
import json
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from service import errors

QUICK_LIST = "https://www.neuronpedia.org/quick-list/"


@dataclass(frozen=True)
class Explanation:
    index: int
    description: str
    type_name: str | None
    explanation_model_name: str | None


def files(path: Path) -> list[Path]:
    """The export files at `path`: a file, or the batches in a folder (or its `explanations/`)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise errors.BadInput(f"{path}: no such file or folder")
    folder = path / "explanations" if (path / "explanations").is_dir() else path
    found = sorted(
        (p for p in folder.iterdir() if p.name.endswith((".jsonl.gz", ".jsonl"))),
        key=lambda p: (_batch_number(p), p.name),
    )
    if not found:
        raise errors.BadInput(f"{path}: expected batch-N.jsonl.gz files (Neuronpedia's export)")
    return found


def _batch_number(path: Path) -> int:
    stem = path.name.split(".", 1)[0]
    digits = stem.rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() else -1


def read(paths: Iterable[Path], neuronpedia_id: str, d_sae: int) -> list[Explanation]:
    """Every explanation in the files, checked: a line that is not one of sae `neuronpedia_id`
    (MODEL/SOURCE) with an index below `d_sae` is a one-line BadInput naming file and line."""
    model, source = neuronpedia_id.split("/", 1)
    found = []
    for path in paths:
        for line_number, line in _lines(path):
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise errors.BadInput(f"{where}: not a JSON object ({exc.msg})") from None
            if not isinstance(record, dict):
                raise errors.BadInput(f"{where}: expected a JSON object")
            for field, want in (("modelId", model), ("layer", source)):
                if record.get(field) != want:
                    raise errors.BadInput(
                        f"{where}: field {field!r}: expected {want!r} (the sae is linked to"
                        f" {neuronpedia_id}), got {record.get(field)!r}"
                    )
            found.append(
                Explanation(
                    _index(record.get("index"), d_sae, where),
                    _text(record, "description", where, required=True) or "",
                    _text(record, "typeName", where),
                    _text(record, "explanationModelName", where),
                )
            )
    return found


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield number, line
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise errors.BadInput(f"{path}: unreadable or truncated ({exc})") from None


def _index(value: object, d_sae: int, where: str) -> int:
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not text.isdigit() or int(text) >= d_sae:
        raise errors.BadInput(
            f"{where}: field 'index': expected a latent index 0..{d_sae - 1}, got {value!r}"
        )
    return int(text)


def _text(
    record: dict[str, object], field: str, where: str, *, required: bool = False
) -> str | None:
    value = record.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise errors.BadInput(f"{where}: field {field!r}: expected a string, got {value!r}")
    return value


def quick_list(name: str, latents: Iterable[tuple[str, int]]) -> str:
    """A Neuronpedia quick-list link for (neuronpedia id MODEL/SOURCE, index) pairs."""
    features = [
        {"modelId": np_id.split("/", 1)[0], "layer": np_id.split("/", 1)[1], "index": str(i)}
        for np_id, i in latents
    ]
    query = urllib.parse.urlencode({"name": name, "features": json.dumps(features)})
    return f"{QUICK_LIST}?{query}"
