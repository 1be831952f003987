"""Batch generation over datasets: JSON lines in, JSON lines out, on this machine or a Ray cluster.

Each input line is an object with an ``id``, a ``prompt`` (text) or chat ``messages``, and optionally any
of :data:`LINE_OPTIONS` (``max_tokens``, ``temperature``, ``seed``, ``stop``, ``json_schema``, ...). Each
output line holds the ``id``, the ``text``, the ``finish_reason``, the ``usage`` and the ``timings``, in
input order; a malformed line becomes ``{"line": N, "id": ..., "error": "..."}`` and the rest goes on.

Lines with the same options run together as ragged rows of one batch (each with its own seed, so a line's
output never depends on its neighbours). An output file that already holds some lines is resumed: the ids
(and error lines) it has are skipped, a line cut short by a kill is dropped, and the rest is appended.

On Ray (``pip install 'fastlm[ray]'``) the pending lines become a ``ray.data.Dataset`` whose
``map_batches`` runs an actor class that loads the model once per actor; GGUF files are memory-mapped,
so the actors of one node share the page cache. fastlm imports ray only here, only when asked.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import FastLMError

# Per-line options and the keyword of LanguageModel.generate each one sets (OpenAI's names where they differ).
LINE_OPTIONS = {"max_tokens": "max_new_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                "min_p": "min_p", "seed": "seed", "stop": "stop", "json_schema": "json_schema", "regex": "regex",
                "grammar": "grammar", "presence_penalty": "presence_penalty",
                "frequency_penalty": "frequency_penalty", "repetition_penalty": "repetition_penalty",
                "greedy": "greedy"}
DEFAULT_MAX_TOKENS = 256


@dataclass
class Line:
    """One parsed input line: ``number`` (1-based), ``id``, the prompt or messages, and its options."""
    number: int
    id: Any
    prompt: str | None = None
    messages: list | None = None
    options: dict = field(default_factory=dict)

    def group(self) -> str:
        """Lines that may share a batch: the same options but the seed."""
        return json.dumps({k: v for k, v in self.options.items() if k != "seed"}, sort_keys=True)


class LineError(FastLMError, ValueError):
    """A malformed input line."""


def parse_line(text: str, number: int) -> Line:
    """A :class:`Line` from one JSON line; anything wrong raises :class:`LineError` saying what."""
    try:
        record = json.loads(text)
    except ValueError as e:
        raise LineError(f"line {number}: not JSON: {e}") from None
    if not isinstance(record, dict):
        raise LineError(f"line {number}: expected a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("id"), (str, int)) or isinstance(record.get("id"), bool):
        raise LineError(f"line {number}: needs an \"id\" (a string or an integer)")
    unknown = sorted(set(record) - {"id", "prompt", "messages"} - set(LINE_OPTIONS))
    if unknown:
        raise LineError(f"line {number}: unknown field {unknown[0]!r}; known: id, prompt, messages, "
                        f"{', '.join(LINE_OPTIONS)}")
    prompt, messages = record.get("prompt"), record.get("messages")
    if (prompt is None) == (messages is None):
        raise LineError(f"line {number}: give exactly one of \"prompt\" and \"messages\"")
    if prompt is not None and not isinstance(prompt, str):
        raise LineError(f"line {number}: \"prompt\" must be a string")
    if messages is not None and not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)):
        raise LineError(f"line {number}: \"messages\" must be a list of {{\"role\", \"content\"}} strings")
    options = {LINE_OPTIONS[k]: v for k, v in record.items() if k in LINE_OPTIONS}
    return Line(number, record["id"], prompt, messages, options)


def generate_lines(lm, lines: list[Line], batch_size: int = 16) -> Iterator[dict]:
    """Output records of ``lines`` in their order: lines with the same options run as one ragged batch
    (up to ``batch_size`` rows); a line whose options the model refuses becomes an error record."""
    results: dict[int, dict] = {}            # line number -> record, until the lines before it are out
    groups: dict[str, list[Line]] = {}
    for line in lines:
        groups.setdefault(line.group(), []).append(line)
    order = iter(lines)
    pending = next(order, None)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            options = dict(chunk[0].options)
            max_new = options.pop("max_new_tokens", DEFAULT_MAX_TOKENS)
            options["seed"] = [line.options.get("seed") for line in chunk]
            try:
                prompts = [lm.encode(line.prompt) if line.messages is None else lm.chat_prompt(line.messages)
                           for line in chunk]
                outputs = [_record(line, r) for line, r in zip(chunk, lm.generate_batch_ids(prompts, max_new,
                                                                                             **options))]
            except (FastLMError, TypeError, ValueError) as e:
                outputs = [{"line": line.number, "id": line.id, "error": str(e)} for line in chunk]
            results.update((line.number, out) for line, out in zip(chunk, outputs))
            while pending is not None and pending.number in results:      # release what is in order
                yield results.pop(pending.number)
                pending = next(order, None)


def _record(line: Line, result) -> dict:
    t = result.timings
    return {"id": line.id, "text": result.text, "finish_reason": result.finish_reason,
            "usage": {"prompt_tokens": result.usage.prompt_tokens,
                      "completion_tokens": result.usage.completion_tokens,
                      "total_tokens": result.usage.total_tokens},
            "timings": {"time_to_first_token": t.time_to_first_token, "prompt_tps": t.prompt_tps,
                        "generation_tps": t.generation_tps}}


# ---------------------------------------------------------------------------------------------------- files

def read_input(path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line."""
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if text.strip():
                yield number, text


def resume(path: Path) -> tuple[set, set]:
    """The ids and the error line numbers an output file already holds. A last line cut short (a killed
    run) is removed from the file, so appending goes on from a whole line."""
    done_ids, done_lines = set(), set()
    if not path.exists():
        return done_ids, done_lines
    with open(path, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1 if not data.endswith(b"\n") else len(data)
        if keep < len(data):
            f.truncate(keep)
    for text in data[:keep].decode("utf-8").splitlines():
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if "error" in record:
            done_lines.add(record.get("line"))
        else:
            done_ids.add(json.dumps(record.get("id")))
    return done_ids, done_lines


class Progress:
    """A one-line progress bar on stderr: lines done of all, generated tokens/s."""

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.tokens, self.stream = total, 0, 0, stream or sys.stderr
        self.start = time.perf_counter()

    def update(self, record: dict) -> None:
        self.done += 1
        self.tokens += record.get("usage", {}).get("completion_tokens", 0)
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        filled = int(30 * self.done / max(self.total, 1))
        self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} lines, "
                          f"{rate:.1f} tok/s")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def run_file(model: str | os.PathLike, input_path, output_path, *, ray_address: str | None = None,
             actors: int = 1, threads_per_actor: int = 1, batch_size: int = 16, progress: bool = True) -> dict:
    """``fastlm batch``: generate for every pending line of ``input_path`` into ``output_path`` (appended,
    in input order; resumed if it exists). ``ray_address`` None runs in this process; ``"local"`` starts a
    local Ray cluster, ``"auto"`` or an address joins one. Returns counts: lines done, skipped, failed."""
    output_path = Path(output_path)
    done_ids, done_lines = resume(output_path)
    todo, errors, skipped = [], [], 0
    for number, text in read_input(input_path):
        if number in done_lines:
            skipped += 1
            continue
        try:
            line = parse_line(text, number)
        except LineError as e:
            errors.append({"line": number, "id": _loose_id(text), "error": str(e)})
            continue
        if json.dumps(line.id) in done_ids:
            skipped += 1
        else:
            todo.append(line)
    records = generate(model, todo, ray_address=ray_address, actors=actors, threads_per_actor=threads_per_actor,
                       batch_size=batch_size)
    bar = Progress(len(todo) + len(errors)) if progress else None
    counts = {"done": 0, "skipped": skipped, "failed": 0}
    # Error lines go in their place among the results, so the output keeps the input's order.
    errors_by_line = {e["line"]: e for e in errors}
    with open(output_path, "a", encoding="utf-8") as out:
        for record in _merge_in_order(records, errors_by_line, [line.number for line in todo]):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            counts["failed" if "error" in record else "done"] += 1
            if bar:
                bar.update(record)
    if bar:
        bar.close()
    return counts


def _merge_in_order(records: Iterable[dict], errors: dict[int, dict], numbers: list[int]) -> Iterator[dict]:
    """The results of lines ``numbers`` (in that order) with the error records slotted in by line number."""
    pending = sorted(errors)
    for number, record in zip(numbers, records):
        while pending and pending[0] < number:
            yield errors[pending.pop(0)]
        yield record
    for n in pending:
        yield errors[n]


def _loose_id(text: str):
    try:
        record = json.loads(text)
        return record.get("id") if isinstance(record, dict) else None
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------ backends

def generate(model, lines: list[Line], *, ray_address: str | None = None, actors: int = 1,
             threads_per_actor: int = 1, batch_size: int = 16) -> Iterator[dict]:
    """Output records of ``lines`` in order, in this process (``model``: a LanguageModel or what
    :func:`fastlm.load` takes) or on Ray (``ray_address``: "local", "auto" or an address)."""
    if not lines:
        return iter(())
    if ray_address is None:
        from .api import LanguageModel, load
        lm = model if isinstance(model, LanguageModel) else load(model)
        return generate_lines(lm, lines, batch_size)
    return _ray_generate(str(model), lines, ray_address, actors, threads_per_actor, batch_size)


class BatchActor:
    """A Ray Data actor: loads the model once, then turns batches of input lines into output records."""

    def __init__(self, model: str, threads: int, batch_size: int):
        from . import load, set_num_threads
        set_num_threads(threads)
        self.lm, self.batch_size = load(model), batch_size

    def __call__(self, batch: dict) -> dict:
        lines = [Line(**json.loads(text)) for text in batch["line"]]
        return {"record": [json.dumps(r) for r in generate_lines(self.lm, lines, self.batch_size)]}


def _ray_generate(model: str, lines: list[Line], address: str, actors: int, threads: int,
                  batch_size: int) -> Iterator[dict]:
    ray = _ray()
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=actors * threads, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR")
        else:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    data = ray.data.DataContext.get_current()
    data.execution_options.preserve_order = True            # records come back in input order
    data.enable_progress_bars = False                        # fastlm's own bar counts lines and tokens
    items = [{"line": json.dumps(line.__dict__)} for line in lines]
    dataset = ray.data.from_items(items).map_batches(
        BatchActor, fn_constructor_args=(model, threads, batch_size), batch_size=batch_size,
        concurrency=actors, num_cpus=threads)
    return (json.loads(row["record"]) for row in dataset.iter_rows())


def generate_records(model, records, *, ray_address: str | None = None, actors: int = 1,
                     threads_per_actor: int = 1, batch_size: int = 16):
    """The Python API: output records for input records (dicts shaped like the JSON lines). ``records``
    an iterable gives an iterator of output dicts in order (malformed records become error records);
    a ``ray.data.Dataset`` gives a Dataset (see :func:`generate_dataset`)."""
    if hasattr(records, "map_batches"):
        return generate_dataset(model, records, actors=actors, threads_per_actor=threads_per_actor,
                                batch_size=batch_size)
    lines, errors = [], {}
    for number, record in enumerate(records, 1):
        try:
            lines.append(parse_line(json.dumps(record), number))
        except (LineError, TypeError) as e:
            errors[number] = {"line": number, "id": record.get("id") if isinstance(record, dict) else None,
                              "error": str(e)}
    outputs = generate(model, lines, ray_address=ray_address, actors=actors,
                       threads_per_actor=threads_per_actor, batch_size=batch_size)
    return _merge_in_order(outputs, errors, [line.number for line in lines])


def generate_dataset(model, dataset, *, actors: int = 1, threads_per_actor: int = 1, batch_size: int = 16):
    """The Python API on a ``ray.data.Dataset`` of input records (columns as the JSON lines'): a Dataset
    of output records (JSON text in column ``record``), computed lazily by :class:`BatchActor` s."""
    ray = _ray()
    ray.data.DataContext.get_current().execution_options.preserve_order = True

    def to_lines(batch: dict) -> dict:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        return {"line": [json.dumps(parse_line(json.dumps(_plain(r)), 0).__dict__) for r in rows]}
    return dataset.map_batches(to_lines, batch_size=batch_size).map_batches(
        BatchActor, fn_constructor_args=(str(model), threads_per_actor, batch_size), batch_size=batch_size,
        concurrency=actors, num_cpus=threads_per_actor)


def _plain(row: dict) -> dict:
    """A Dataset row as JSON-ready values (NumPy scalars and arrays become numbers and lists)."""
    out = {}
    for k, v in row.items():
        if v is None or (isinstance(v, float) and v != v):
            continue
        out[k] = v.tolist() if hasattr(v, "tolist") else v
    return out


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise FastLMError("the Ray backend needs ray: pip install 'fastlm[ray]'") from None
    return ray
