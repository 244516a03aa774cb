"""What a run was started with, and the guard that keeps a resume from silently taking new values.

A run folder's ``training_config.json`` records every ``TrainingConfig`` field, the model's
architecture (``model_config``) and how batches are drawn (``data``: the source and the
augmentations). Resuming compares them with what the new command asks for: any difference is
refused, naming each field with its old and new value, unless the field is allowed to change
(``--allow-change FIELD``); ``steps`` may grow, and the logging and saving intervals, which
change no number of the run, may change. The check reads only: a refused resume writes nothing.

May import: utils (nothing of the package's models or trainer).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, List, Mapping, Optional

from ..utils.files import read_json_object

RECORD = "training_config.json"
# Fields that change when and how often the run reports, not what it computes.
FREE = ("log_every", "save_every", "val_every", "tensorboard")
# Entries of a model config that describe the file, not the architecture.
_MODEL_METADATA = ("transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype")


class ResumeRefused(ValueError):
    """A resume whose settings differ from the run's: names each changed field."""


def run_record(training: Mapping[str, Any], model_config: Mapping[str, Any], data: Mapping[str, Any]) -> dict:
    """What ``training_config.json`` holds: the training fields, ``model_config`` (the
    architecture, without file metadata) and ``data`` (source and augmentations)."""
    model = {k: v for k, v in model_config.items() if k not in _MODEL_METADATA and not k.startswith("_")}
    return {**dict(training), "model_config": model, "data": dict(data)}


def _changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> List[tuple]:
    found = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            found += _changes(before, after, f"{prefix}{key}.")
        elif before != after:
            found.append((prefix + key, before, after))
    return found


def check_resume(
    output_dir: str,
    record: Mapping[str, Any],
    allow_change: Iterable[str] = (),
    defaults: Optional[Mapping[str, Any]] = None,
) -> Optional[dict]:
    """Compare the run recorded in ``output_dir`` with ``record`` (see [`run_record`]); returns the
    recorded one, or None when the folder holds no record (a run of an older version keeps only
    its training fields, which are compared alone). Raises [`ResumeRefused`] listing every changed
    field not in ``allow_change`` (fewer ``steps`` included; more are the run going on); reads only.
    A training field the record lacks (added in a later version) counts as its value in ``defaults``."""
    path = os.path.join(output_dir, RECORD)
    if not os.path.isfile(path):
        return None
    stored = read_json_object(path, "a run record")
    record = json.loads(json.dumps(record))  # as the record reads back: tuples are lists, keys strings
    stored = {**{k: v for k, v in (defaults or {}).items() if k in record}, **stored}
    done = stored.get("step", 0)
    allowed = set(allow_change)
    comparable = {k: v for k, v in record.items() if k in stored or k not in ("model_config", "data")}
    refused = []
    for field, before, after in _changes({k: v for k, v in stored.items() if k != "step"}, comparable):
        top = field.split(".")[0]
        if field in FREE or field in allowed or top in allowed:
            continue
        if field == "steps" and isinstance(after, int) and isinstance(before, int) and after >= before:
            continue  # more steps: the run goes on
        refused.append(f"{field}: {before!r} -> {after!r}")
    if refused:
        raise ResumeRefused(
            f"{output_dir}: resuming the run at step {done} with other settings: {'; '.join(refused)}. "
            "Give --allow-change FIELD for each to accept it (nothing was written)"
        )
    return stored


__all__ = ["FREE", "RECORD", "ResumeRefused", "check_resume", "run_record"]
