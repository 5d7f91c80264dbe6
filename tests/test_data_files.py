"""Bad rows in corpus files (issue 14, fault 6): one bad line of a .jsonl is one skipped, counted row (with its reason
and line number), in map-style and streaming datasets; only an unreadable file is an error, and it names the file."""

import json
import logging

import pytest
from tiny_model import THINK_OPEN, tiny_corpus
from transformers import AutoTokenizer

from rlp_trl.tools import train as cli
from rlp_trl.data import build_position_dataset, read_json_lines

GOOD = tiny_corpus(6, seed=3)


def bad_jsonl(path):
    """Good documents on lines 1, 3, 5, 7, 9, 11; a bad one of each kind in between."""
    bad = [
        b'{"text": "caf\xe9 au lait: Latin-1 bytes, not UTF-8"}',  # line 2: not_utf8
        b'{"text": "a broken escape \\ud800 leaves a lone surrogate"}',  # line 4: lone_surrogate
        b'{"text": "an unterminated line',  # line 6: invalid_json
        b'{"text": 12345}',  # line 8: not_a_string
        b'["not", "an", "object"]',  # line 10: not_an_object
    ]
    lines = []
    for i, doc in enumerate(GOOD):
        lines.append(json.dumps({"text": doc, "meta": {"i": i}}).encode())
        if i < len(bad):
            lines.append(bad[i])
    path.write_bytes(b"\n".join(lines) + b"\n\n")  # line 12: blank, a counted skip (issue 21)
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_bad_lines_are_skipped_and_counted_with_their_line_numbers(tmp_path, tokenizer, caplog):
    path = bad_jsonl(tmp_path / "docs.jsonl")
    docs = cli.load_documents(path, text_field="text")
    rows, stats = build_position_dataset(docs, tokenizer, open_ids=tokenizer.encode(THINK_OPEN), min_context_tokens=4)
    assert stats.documents == 12 and stats.positions == len(rows) == 6
    assert stats.skipped == {"not_utf8": 1, "lone_surrogate": 1, "invalid_json": 1, "not_a_string": 1, "not_an_object": 1,
                             "blank_line": 1}
    assert stats.examples == {"not_utf8": [2], "lone_surrogate": [4], "invalid_json": [6], "not_a_string": [8],
                              "not_an_object": [10], "blank_line": [12]}
    assert "invalid_json=1 (rows 6)" in stats.summary() and "not_utf8=1 (rows 2)" in stats.summary()
    assert sorted(rows["doc_index"]) == [0, 2, 4, 6, 8, 10]  # the good lines


def test_bad_lines_in_a_stream_are_skipped_and_logged(tmp_path, tokenizer, caplog):
    path = bad_jsonl(tmp_path / "docs.jsonl")
    stream = cli.load_documents(path, streaming=True, text_field="text")
    rows, _ = build_position_dataset(stream, tokenizer, open_ids=tokenizer.encode(THINK_OPEN), min_context_tokens=4)
    with caplog.at_level(logging.WARNING, logger="rlp_trl.data"):
        got = list(rows)
    assert sorted(r["doc_index"] for r in got) == [0, 2, 4, 6, 8, 10]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for line, reason in ((2, "not_utf8"), (4, "lone_surrogate"), (6, "invalid_json"), (8, "not_a_string")):
        assert f"docs.jsonl:{line}: skipped ({reason})" in logged
    assert "skipped blank_line=1, invalid_json=1, lone_surrogate=1, not_a_string=1, not_an_object=1, not_utf8=1" in logged


@pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
def test_training_on_a_file_with_bad_lines(tiny_model_dir, tmp_path, streaming, capsys):
    path = bad_jsonl(tmp_path / "docs.jsonl")
    argv = ["--model_name_or_path", tiny_model_dir, "--dataset_name", path, "--output_dir", str(tmp_path / "out"),
            "--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--disable_tqdm", "true", "--max_steps", "1",
            "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "4",
            "--max_context_tokens", "32", "--min_context_tokens", "4", "--save_strategy", "no", "--seed", "0",
            "--gradient_checkpointing", "false", "--dataset_streaming", str(streaming).lower()]
    trainer = cli.main(argv)
    assert trainer.state.global_step == 1
    if not streaming:
        assert "not_utf8=1 (rows 2)" in capsys.readouterr().out


def test_an_unreadable_file_is_an_error_naming_it(tmp_path):
    folder = tmp_path / "corpus.jsonl"
    folder.mkdir()  # exists, cannot be read as a file
    with pytest.raises(OSError, match=r"Cannot read the corpus file .*corpus.jsonl"):
        read_json_lines(str(folder))


# ---------------------------------------------------------------------------------------------- issue 21, item 8
def test_a_streamed_folder_of_jsonl_files_skips_bad_lines(tmp_path, tokenizer):
    """Was: folders were read line by line only when not streaming; streamed, Arrow failed on the first bad line
    (UnicodeDecodeError / ArrowInvalid ... surrogate pair)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    bad_jsonl(folder / "a.jsonl")
    bad_jsonl(folder / "b.jsonl")
    stream = cli.load_documents(str(folder), streaming=True, text_field="text")
    rows, _ = build_position_dataset(stream, tokenizer, open_ids=tokenizer.encode(THINK_OPEN), min_context_tokens=4)
    assert len(list(rows)) == 12  # six good documents per file
    docs = cli.load_documents(str(folder), text_field="text")  # map-style: the same rows, counted
    _, stats = build_position_dataset(docs, tokenizer, open_ids=tokenizer.encode(THINK_OPEN), min_context_tokens=4)
    assert stats.documents == 24 and stats.skipped["not_utf8"] == 2 and stats.positions == 12


def test_a_json_lines_file_named_json_with_a_bad_first_line_is_read_line_by_line(tmp_path, tokenizer):
    from rlp_trl.data import is_json_lines

    path = tmp_path / "docs.json"
    path.write_text('{"text": "cut off\n' + "".join(json.dumps({"text": t}) + "\n" for t in GOOD))
    assert is_json_lines(str(path))
    docs = cli.load_documents(str(path), text_field="text")
    _, stats = build_position_dataset(docs, tokenizer, open_ids=tokenizer.encode(THINK_OPEN), min_context_tokens=4)
    assert stats.skipped == {"invalid_json": 1} and stats.examples["invalid_json"] == [1] and stats.positions == 6
    pretty = tmp_path / "pretty.json"  # one object over many lines: still Arrow's
    pretty.write_text(json.dumps({"data": [{"text": t} for t in GOOD[:3]]}, indent=2))
    assert not is_json_lines(str(pretty))
    pretty.write_text(json.dumps({"text": GOOD[0]}, indent=2))
    assert not is_json_lines(str(pretty))


def test_blank_lines_are_counted_with_a_reason(tmp_path, tokenizer):
    """Was: 34 lines -> "32 documents", the two blank ones dropped without a word."""
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": t}) for t in GOOD]
    lines[2:2] = ["", "   \t"]
    path.write_text("\n".join(lines) + "\n")
    docs = cli.load_documents(str(path), text_field="text")
    _, stats = build_position_dataset(docs, tokenizer, open_ids=tokenizer.encode(THINK_OPEN), min_context_tokens=4)
    assert stats.documents == 8 and stats.skipped == {"blank_line": 2} and stats.examples["blank_line"] == [3, 4]
    assert "blank_line=2 (rows 3, 4)" in stats.summary()


@pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
def test_a_misnamed_text_field_of_a_jsonl_file_lists_the_fields_seen(tmp_path, streaming):
    """docs/reliability.md promises the columns seen for a misnamed column; the .jsonl path did not list them."""
    from rlp_trl.usage import UsageError

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(GOOD)))
    with pytest.raises(UsageError, match=r"no row has the text field 'text'; the rows' fields are \['body', 'id'\]"):
        cli.load_documents(str(path), streaming=streaming, text_field="text")
