"""JSON-lines corpora read line by line (`read_json_lines`), so that one bad line is one counted skip, not a failed
load: Arrow's JSON reader stops the whole load at the first line that is not UTF-8, not JSON or holds a broken escape.
`rlp_trl.data.build_position_dataset` counts the skips by reason with their line numbers."""

import hashlib
import json
import logging
import os
from collections import Counter

from datasets import Dataset, Features, IterableDataset, Value

from .usage import UsageError

READ_REASONS = ("blank_line", "not_utf8", "lone_surrogate", "invalid_json", "not_an_object", "no_text_field")
READ_ERROR_COLUMN, LINE_COLUMN = "rlp_read_error", "rlp_line"  # written by the reader, consumed by data._tokenize
EXAMPLE_ROWS = 5  # row (line) numbers kept per skip reason

logger = logging.getLogger("rlp_trl.data")


def _decode_line(raw: bytes, number: int, text_field: str) -> tuple[str | None, str | None]:
    """(text, skip reason) of one line of a JSON-lines file."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not_utf8"
    if number == 1:
        line = line.lstrip("\ufeff")
    try:
        row = json.loads(line)
    except ValueError:
        return None, "invalid_json"
    if not isinstance(row, dict):
        return None, "not_an_object"
    if text_field not in row:
        return None, "no_text_field"
    text = row[text_field]
    if not isinstance(text, str):
        return None, "not_a_string"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone UTF-16 surrogate from a broken \uXXXX escape: Arrow cannot hold it
        return None, "lone_surrogate"
    return text, None


def _json_rows(paths: list[str], text_field: str, signature: str = ""):
    """Every line of each file of `paths` as {text, read error, line number}; bad lines, and empty or whitespace-only
    ones (`blank_line`), are kept as skips (counted by `build_position_dataset`, and logged here with their line
    numbers: the only account a stream gets)."""
    for path in [paths] if isinstance(paths, str) else paths:
        yield from _json_file_rows(path, text_field)


def _json_file_rows(path: str, text_field: str):
    counts, shown = Counter(), Counter()
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                raw = raw.rstrip(b"\r\n")
                text, reason = _decode_line(raw, number, text_field) if raw.strip() else (None, "blank_line")
                if reason:
                    counts[reason] += 1
                    if shown[reason] < EXAMPLE_ROWS and reason != "blank_line":
                        shown[reason] += 1
                        logger.warning(f"[rlp_trl] {path}:{number}: skipped ({reason})")
                yield {text_field: text, READ_ERROR_COLUMN: reason, LINE_COLUMN: number}
    except OSError as err:
        raise OSError(f"Cannot read the corpus file {path}: {err.strerror or err}") from err
    if counts:
        logger.warning(f"[rlp_trl] {path}: skipped " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


def _file_signature(path: str) -> str:
    """Identifies the file's content for the datasets cache: size, mtime and a hash of its first and last MB."""
    st = os.stat(path)
    h = hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()


def _is_object_line(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # also UnicodeDecodeError
        return False


JSON_LINES_PROBE = 20  # non-blank lines looked at when the first one of a .json file is not valid JSON


def is_json_lines(path: str) -> bool:
    """A .jsonl file, or a .json file that is not one JSON array / object spanning lines: its first line parses as
    JSON, or (a bad first line) at least half of the next `JSON_LINES_PROBE` non-blank lines are JSON objects on their
    own (the lines of a pretty-printed object or array almost never are)."""
    if path.lower().endswith(".jsonl"):
        return True
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    complete = len(head) < 1 << 16
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        return False
    lines = head.split(b"\n")
    if not complete:
        lines = lines[:-1]  # cut at the read limit
    lines = [line for line in lines if line.strip()]
    if not lines:
        return False
    try:
        json.loads(lines[0])
        return True
    except ValueError:
        pass
    rest = lines[1 : 1 + JSON_LINES_PROBE]
    return bool(rest) and 2 * sum(map(_is_object_line, rest)) >= len(rest)


def _fields_seen(paths: list[str], limit: int = 100) -> list[str]:
    """The keys of the JSON objects among the first `limit` lines of the files (for a misnamed text field)."""
    keys = set()
    for path in paths:
        with open(path, "rb") as f:
            for _, raw in zip(range(limit), f):
                try:
                    row = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    keys.update(row)
    return sorted(keys)


def _misnamed_field(paths: list[str], text_field: str) -> UsageError | None:
    keys = _fields_seen(paths)
    if not keys:
        return None
    where = paths[0] if len(paths) == 1 else f"{len(paths)} files ({paths[0]}, ...)"
    return UsageError(f"{where}: no row has the text field {text_field!r}; the rows' fields are {keys}: pass "
                      f"--dataset_text_field with the column that holds the text")


def read_json_lines(path: str | list[str], text_field: str = "text", streaming: bool = False
                    ) -> Dataset | IterableDataset:
    """A JSON-lines corpus (one file, or several read one after the other), read line by line so that one bad line is
    one skipped row, not a failed load.

    Lines that are empty or whitespace-only, not UTF-8, not valid JSON, not an object, lack `text_field`, hold a
    non-string, or hold a lone surrogate (a broken `\\ud800` escape) become rows with a skip reason;
    `build_position_dataset` counts them with their line numbers (map-style) and the reader logs the first ones per
    reason (map-style and streaming). When no row has `text_field` (map-style: none at all; streaming: none among the
    first 100 lines) it is a UsageError listing the fields the rows have. Only a file that cannot be read is an
    OSError, naming the file. Columns: `text_field`, `rlp_read_error`, `rlp_line` (the line number in its file).
    """
    paths = [path] if isinstance(path, str) else list(path)
    try:
        signature = ":".join(_file_signature(p) for p in paths)
    except OSError as err:
        raise OSError(f"Cannot read the corpus file {err.filename or paths[0]}: {err.strerror or err}") from err
    features = Features({text_field: Value("string"), READ_ERROR_COLUMN: Value("string"), LINE_COLUMN: Value("int64")})
    kwargs = {"paths": paths, "text_field": text_field, "signature": signature}
    if streaming:
        dataset = IterableDataset.from_generator(_json_rows, features=features, gen_kwargs=kwargs)
        reasons = set(_first_reasons(paths, text_field))
    else:
        dataset = Dataset.from_generator(_json_rows, features=features, gen_kwargs=kwargs)
        reasons = set(dataset[READ_ERROR_COLUMN])
    if "no_text_field" in reasons and reasons <= _NOT_A_ROW_WITH_TEXT:
        error = _misnamed_field(paths, text_field)
        if error is not None:
            raise error
    return dataset


_NOT_A_ROW_WITH_TEXT = {"no_text_field", "blank_line", "invalid_json", "not_utf8", "not_an_object"}


def _first_reasons(paths: list[str], text_field: str, limit: int = 100) -> list[str | None]:
    """The skip reasons (None: a usable row) of the first `limit` lines, read without logging."""
    out = []
    for path in paths:
        with open(path, "rb") as f:
            for number, raw in zip(range(1, limit - len(out) + 1), f):
                raw = raw.rstrip(b"\r\n")
                out.append(_decode_line(raw, number, text_field)[1] if raw.strip() else "blank_line")
        if len(out) >= limit:
            break
    return out
