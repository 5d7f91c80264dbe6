"""Issue 13, "first contact just works": one test per row of its table (what a new user did, what happened).

User errors of the console scripts are one line `<prog>: error: ...` with exit status 2; the default context length
fits the model's window; local data is read as users mean it; --help describes RLP; the model card is true; LoRA
outputs evaluate; library warnings are gone; lm-eval runs for real on a shipped offline task.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import tiny_config
from tiny_model import build_tiny_gpt2, tiny_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--use_cpu", "true", "--bf16", "false", "--num_generations", "4", "--per_device_train_batch_size", "8",
        "--max_completion_length", "8", "--min_context_tokens", "4", "--max_context_tokens", "64", "--report_to",
        "none", "--save_strategy", "no", "--max_steps", "1", "--disable_tqdm", "true", "--learning_rate", "1e-3"]


@pytest.fixture
def docs_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(16)))
    return str(path)


def run_train(capsys, argv):
    """rlp-train in-process: (exit status, stderr)."""
    from rlp_trl.tools.train import cli

    code = cli(argv)
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


# ------------------------------------------------------------------------- rows: errors, missing and empty files
@pytest.mark.parametrize("case", ["empty_jsonl", "missing_dataset", "missing_model", "offline_hub_model",
                                  "misspelled_column", "ema_decay", "num_generations", "blank_txt", "missing_config"])
def test_user_errors_are_one_line_with_exit_status_2(case, tmp_path, tiny_model_dir, docs_jsonl, capsys):
    model, data, extra = tiny_model_dir, docs_jsonl, []
    if case == "empty_jsonl":
        (tmp_path / "empty.jsonl").write_text("")
        data, expect = str(tmp_path / "empty.jsonl"), "the file is empty"
    elif case == "missing_dataset":
        data, expect = "./nonexist.jsonl", "--dataset_name ./nonexist.jsonl: no such file or folder"
    elif case == "missing_model":
        model, expect = "./no-such-model", "--model_name_or_path ./no-such-model: no such file or folder"
    elif case == "offline_hub_model":
        model, expect = "nobody/no-such-model", "the Hugging Face Hub is offline"
    elif case == "misspelled_column":
        extra, expect = ["--dataset_text_field", "txt"], "pass --dataset_text_field with the column"
    elif case == "ema_decay":
        extra, expect = ["--ema_decay", "1.5"], "ema_decay must be in (0, 1)"
    elif case == "num_generations":
        extra, expect = ["--num_generations", "3"], "--per_device_train_batch_size 9"
    elif case == "blank_txt":
        (tmp_path / "blank.txt").write_text("\n\n   \n\n")
        data, expect = str(tmp_path / "blank.txt"), "empty"
    else:
        extra, expect = ["--config", str(tmp_path / "nope.yaml")], "nope.yaml: no such file"
    argv = ["--model_name_or_path", model, "--dataset_name", data, "--output_dir", str(tmp_path / "out"), *FAST, *extra]
    if case == "num_generations":  # FAST sets 4 generations; the user's 3 comes last and wins
        argv = argv[: argv.index("--num_generations")] + argv[argv.index("--num_generations") + 2 :] + extra
    code, err = run_train(capsys, argv)
    line = one_error_line(err)
    assert code == 2, err[-2000:]
    assert line.startswith("rlp-train: error: ") or ": error: " in line
    assert expect in line, line
    if case == "blank_txt":
        assert "min_context_tokens" not in line  # the old, wrong fix


def test_blank_documents_name_the_right_fix(tiny_model_dir):
    """A corpus whose documents are all blank says so, instead of proposing a lower min_context_tokens."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from rlp_trl.data import build_position_dataset
    from rlp_trl.usage import UsageError

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(UsageError) as info:
        build_position_dataset(Dataset.from_dict({"text": ["", "  ", "\n"]}), tok, open_ids=[1])
    assert "empty, whitespace-only" in str(info.value) and "min_context_tokens" not in str(info.value).split(". ", 1)[1]


def test_console_script_user_error_has_no_traceback_and_bugs_keep_theirs(tmp_path):
    """The installed `rlp-eval` on a missing file: one line, exit 2. A bug (an exception that is not a user error)
    keeps its traceback."""
    exe = os.path.join(os.path.dirname(sys.executable), "rlp-eval")
    proc = subprocess.run([exe, "--dataset_name", "./nonexist.jsonl", "--output_dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert one_error_line(proc.stderr).startswith("rlp-eval: error: --dataset_name ./nonexist.jsonl: no such file")
    code = ("from rlp_trl.usage import run_cli\n"
            "def main(argv):\n    raise KeyError('a bug')\n"
            "raise SystemExit(run_cli(main, 'rlp-x'))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError: 'a bug'" in proc.stderr


def test_under_accelerate_launch_the_script_line_is_shown_and_quiet_drops_the_launcher_traceback(tmp_path):
    """accelerate launch: the child prints its one line and exits 2; `accelerate launch -q` leaves only that line."""
    (tmp_path / "empty.jsonl").write_text("")
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "-q", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", os.path.join(REPO, "examples", "train_rlp.py"),
           "--dataset_name", str(tmp_path / "empty.jsonl"), "--model_name_or_path", "./missing-model"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert one_error_line(proc.stderr).startswith("train_rlp.py: error: --model_name_or_path ./missing-model")


# ------------------------------------------------------------------------- row: the model's context window
def test_default_context_fits_the_window_and_an_explicit_impossible_one_fails_before_tokenizing(
        tmp_path, tiny_docs, caplog, monkeypatch):
    """A GPT-2 with 256 positions and the default max_context_tokens (2048): shortened, one log line; an explicit
    250 is an error proposing values, raised before any document is tokenized."""
    import rlp_trl.data as data_module
    from rlp_trl import RLPConfig, RLPTrainer
    from rlp_trl.usage import UsageError

    gpt2 = build_tiny_gpt2(str(tmp_path / "gpt2"))
    args = RLPConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, gradient_checkpointing=False,
                     num_generations=4, per_device_train_batch_size=8, max_completion_length=8, min_context_tokens=4,
                     report_to=[], max_steps=1)
    assert args.max_context_tokens == 2048  # the default, not set by the user
    with caplog.at_level("WARNING", logger="rlp_trl"):
        trainer = RLPTrainer(gpt2, args=args, train_dataset=tiny_docs)
    assert trainer.args.max_context_tokens == 256 - (1 + 8 + 1 + 1)
    assert sum("max_context_tokens 2048 -> 245" in r.getMessage() for r in caplog.records) == 1
    assert max(len(c) for c in trainer.train_dataset["context_ids"]) <= 245

    calls = []
    original = data_module.build_position_dataset
    monkeypatch.setattr(data_module, "build_position_dataset", lambda *a, **k: calls.append(1) or original(*a, **k))
    with pytest.raises(UsageError) as info:
        RLPTrainer(gpt2, args=tiny_config(tmp_path, max_context_tokens=250), train_dataset=tiny_docs)
    assert not calls
    assert "Values that fit: --max_context_tokens 245" in str(info.value)


# ------------------------------------------------------------------------- row: a folder of wrapped .txt files
def test_a_folder_of_txt_files_splits_at_blank_lines_like_one_file(tmp_path):
    from rlp_trl.tools.train import load_documents

    folder = tmp_path / "corpus"
    folder.mkdir()
    for k in range(2):
        paragraphs = [textwrap.fill(f"Paragraph {i} of file {k}. " + " ".join(tiny_corpus(1, seed=i)[0].split()[:40]), 40)
                      for i in range(10)]
        (folder / f"part{k}.txt").write_text("\n\n".join(paragraphs) + "\n")
    docs = load_documents(str(folder))
    assert len(docs) == 20
    assert all("\n" in t for t in docs["text"])  # one wrapped paragraph per document, its line breaks kept
    single = load_documents(str(folder / "part0.txt"))
    assert single["text"] == docs["text"][:10]
    (tmp_path / "none").mkdir()
    from rlp_trl.usage import UsageError

    with pytest.raises(UsageError, match="holds no non-empty data file"):
        load_documents(str(tmp_path / "none"))


# ------------------------------------------------------------------------- row: --help
def test_help_describes_rlp_lists_config_and_puts_rlp_options_first(capsys):
    from rlp_trl.tools.train import cli

    with pytest.raises(SystemExit) as info:
        cli(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "Reinforcement as a Pretraining Objective" in out.split("options:")[0]
    assert "--config FILE.yaml" in out.split("options:")[0]
    rlp, grpo = out.index("RLP options (RLPConfig"), out.index("GRPO and Trainer options")
    assert rlp < out.index("--ema_decay") < grpo and out.index("--num_generations") < grpo
    section = lambda flag: out[out.index(f"\n  {flag} "):][:600]  # noqa: E731
    assert "off (fp32) on CPU" in section("--bf16") and "(default: True)" not in section("--bf16")
    resume = " ".join(section("--resume_from_checkpoint").split())
    assert "auto" in resume and "last" in resume and "not directly used" not in resume
    model = " ".join(section("--model_name_or_path").split())
    assert "SmolLM2-135M-Instruct" in model and "(default: None)" not in model
    assert len(out.splitlines()[0]) < 160  # a short usage line, not every option


# ------------------------------------------------------------------------- rows: model card, use_cache, warnings
def test_saved_model_has_a_true_card_use_cache_and_no_library_warnings(tmp_path, tiny_model_dir, docs_jsonl):
    out = tmp_path / "run"
    argv = [sys.executable, os.path.join(REPO, "examples", "train_rlp.py"), "--model_name_or_path", tiny_model_dir,
            "--dataset_name", docs_jsonl, "--output_dir", str(out), *FAST]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for noise in ("gemm_4bit_forward", "`gradient_checkpointing` is deprecated", "will be ignored",
                  "is deprecated and will be removed"):
        assert noise not in proc.stderr, noise
    card = (out / "README.md").read_text()
    assert "None" not in card.split("## Citation")[0] and "licence: license" not in card
    assert f"the local model folder `{tiny_model_dir}`" in card
    assert docs_jsonl in card and "16 documents" in card
    assert "1 optimizer step(s) of 2 contexts x 4 thoughts" in card
    assert "`<think>`" in card and "`</think>`" in card and 'context + "<think>"' in card
    history = [json.loads(line) for line in (out / "rlp_metrics.jsonl").read_text().splitlines()]
    from rlp_trl.model_card import learning_windows

    n, head, tail = learning_windows(history, 8)  # issue 21: the console summary's windows, spreads and caveat
    told = f"{head['gain']:+.2f} (sd {head['gain_sd']:.2f}) -> {tail['gain']:+.2f} (sd {tail['gain_sd']:.2f})"
    assert f"first {n} -> last {n} logged step(s), 8 rollouts each | {told} |" in card
    assert told.replace(" -> ", "  ->  ") in proc.stdout  # the summary printed at the end of the same run
    assert "A short run cannot tell" in card and "nats (mean over the last logged step" not in card
    bibtex = card.split("```bibtex\n")[1].split("```")[0].splitlines()
    assert bibtex[0].startswith("@article{") and bibtex[-1] == "}"
    assert all(line.startswith("    ") and not line.startswith("     ") for line in bibtex[1:-1]), bibtex
    assert "| `ema_decay` | 0.999 |" in card and "| `max_completion_length` | 8 |" in card
    assert json.loads((out / "config.json").read_text())["use_cache"] is True


def test_card_snippet_closes_a_thought_that_hits_the_limit(tmp_path, tiny_model_dir, capsys):
    """The card's prompting snippet, run as written on a saved model whose thoughts never close in 8 tokens: the
    continuation comes after a closed thought (it used to continue the open thought, and the model wrote <think>
    again)."""
    import torch

    from rlp_trl import RLPTrainer

    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=1), train_dataset=tiny_corpus(12))
    trainer.save_model(str(tmp_path / "model"))
    card = (tmp_path / "model" / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0].replace('"<this folder or its Hub id>"',
                                                                    repr(str(tmp_path / "model")))
    torch.manual_seed(0)
    ran = {}
    exec(compile(snippet, "card-snippet", "exec"), ran)  # noqa: S102 - the card's own code, as a user runs it
    text = capsys.readouterr().out
    # this thought ran to the limit (8 tokens, no </think>) and the snippet closed it before continuing the text
    assert ran["thought"].size(1) == ran["ids"].size(1) + 8 + 1 and ran["thought"][0, -1].item() == ran["close"]
    assert "</think>" in text.split("<think>", 1)[1], text


def test_gguf_name_is_not_left_in_the_converted_config(tmp_path):
    from rlp_trl.tools.assets import drop_gguf_config_keys

    (tmp_path / "config.json").write_text(json.dumps({"_model_name_or_path": "Smollm2 135M 8k Lc100K Mix1 Ep2",
                                                      "model_type": "llama"}))
    assert drop_gguf_config_keys(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == {"model_type": "llama"}
    assert not drop_gguf_config_keys(tmp_path)  # nothing left to remove


def test_card_names_the_embedded_base_model(tmp_path):
    from rlp_trl.model_card import describe_base

    folder = tmp_path / "smollm2"
    folder.mkdir()
    (folder / "rlp_trl_ready.json").write_text("{}")
    hub, text = describe_base(str(folder))
    assert hub == "HuggingFaceTB/SmolLM2-135M-Instruct" and "Q4_1 GGUF" in text
    assert describe_base("Qwen/Qwen3-1.7B-Base")[0] == "Qwen/Qwen3-1.7B-Base"


def test_no_bitsandbytes_kernel_line_on_import():
    proc = subprocess.run([sys.executable, "-c", "import rlp_trl, rlp_trl.tools.train"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gemm_4bit_forward" not in proc.stderr and "FutureWarning" not in proc.stderr


# ------------------------------------------------------------------------- row: LoRA outputs evaluate
def test_rlp_eval_and_bench_load_a_lora_output_folder(tmp_path, tiny_model_dir, tiny_docs):
    from peft import LoraConfig

    from rlp_trl import RLPTrainer
    from rlp_trl.tools.eval import cli as eval_cli
    from rlp_trl.tools.heldout import load_with_markers

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=1), train_dataset=tiny_docs,
                         peft_config=lora)
    trainer.train()
    out = str(tmp_path / "lora")
    trainer.save_model(out)
    assert os.path.isfile(os.path.join(out, "adapter_config.json"))
    assert "library_name: peft" in open(os.path.join(out, "README.md")).read()
    docs = tmp_path / "held.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(6, seed=7)))
    code = eval_cli(["--model_name_or_path", out, "--dataset_name", str(docs), "--num_documents", "4",
                     "--doc_nll_documents", "4", "--num_thoughts", "2", "--max_thought_tokens", "4",
                     "--min_context_tokens", "4", "--max_context_tokens", "32", "--output_dir", str(tmp_path / "ev")])
    assert code == 0
    report = json.load(open(tmp_path / "ev" / "eval.json"))
    assert report["models"]["lora"]["summary"]["nll_nothink"]["n"] == 4
    model, tokenizer, open_ids, close_id = load_with_markers(out, "<think>", "</think>")  # what rlp-bench loads
    assert type(model).__name__ == "LlamaForCausalLM" and close_id == tokenizer.convert_tokens_to_ids("</think>")


# ------------------------------------------------------------------------- row: lm-eval run for real
def test_rlp_bench_runs_lm_eval_on_the_shipped_offline_task(tmp_path, tiny_model_dir):
    pytest.importorskip("lm_eval")
    pytest.importorskip("reasoning_gym")
    from rlp_trl.tools.bench import cli as bench_cli

    out = tmp_path / "bench"
    code = bench_cli(["--model_name_or_path", tiny_model_dir, "--lm_eval", "rlp_gsm_symbolic", "--num_problems", "3",
                      "--lm_eval_dtype", "float32", "--lm_eval_batch_size", "4", "--max_answer_tokens", "6",
                      "--output_dir", str(out)])
    assert code == 0
    data = (out / "lm_eval_tasks" / "rlp_gsm_symbolic.jsonl").read_text().splitlines()
    assert len(data) == 3 and {"question", "answer"} <= set(json.loads(data[0]))
    results = [os.path.join(r, f) for r, _, fs in os.walk(out / "lm_eval") for f in fs if f.startswith("results")]
    assert results, list(os.walk(out))
    scores = json.load(open(results[0]))["results"]["rlp_gsm_symbolic"]
    assert 0.0 <= scores["exact_match,last_number"] <= 1.0


# ------------------------------------------------------------------------- row: docs name the embedded model
def test_docs_name_the_embedded_model_as_what_it_is():
    for path in ("README.md", "docs/quickstart.md", "docs/scaling.md", "docs/performance.md"):
        text = open(os.path.join(REPO, path), encoding="utf-8").read()
        assert not re.search(r"SmolLM2-135M(?!-Instruct)", text), path


# ------------------------------------------------------------------------- issue 21, item 2: more one-line errors
def test_push_to_hub_offline_read_only_output_and_misspelled_bench_task_fail_in_one_line_before_loading(
        tmp_path, tiny_model_dir, docs_jsonl, capsys, monkeypatch):
    """Each fails with one line and exit 2 before any model is loaded (the trainer is never built)."""
    import errno
    import tempfile

    import rlp_trl.tools.train as train_module
    from rlp_trl.tools.bench import cli as bench_cli

    monkeypatch.setattr(train_module, "RLPTrainer", lambda *a, **k: pytest.fail("the model was loaded"))
    base = ["--model_name_or_path", tiny_model_dir, "--dataset_name", docs_jsonl, *FAST]
    code, err = run_train(capsys, [*base, "--output_dir", str(tmp_path / "a"), "--push_to_hub", "true"])
    assert code == 2 and "--push_to_hub: the Hugging Face Hub is offline" in one_error_line(err)

    # the Hub not offline but unreachable (a closed local port stands for a failed name resolution)
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    code, err = run_train(capsys, [*base, "--output_dir", str(tmp_path / "b"), "--push_to_hub", "true",
                                   "--hub_token", "hf_not_a_real_token"])
    line = one_error_line(err)
    assert code == 2 and "--push_to_hub: cannot use the Hugging Face Hub" in line and "hf auth login" in line

    read_only = str(tmp_path / "ro")

    def refuse(*args, dir=None, **kwargs):  # root ignores permissions: a read-only file system, simulated
        if dir == read_only:
            raise OSError(errno.EROFS, "Read-only file system")
        return original(*args, dir=dir, **kwargs)

    original = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, err = run_train(capsys, [*base, "--output_dir", read_only])
    assert code == 2 and f"--output_dir {read_only}: cannot write there (Read-only file system)" in one_error_line(err)

    code = bench_cli(["--model_name_or_path", tiny_model_dir, "--tasks", "basic_arithmetc", "--num_problems", "1",
                      "--output_dir", str(tmp_path / "bench")])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "unknown task 'basic_arithmetc'; did you mean 'basic_arithmetic'?" in line


def test_the_lock_of_an_unwritable_folder_is_a_user_error(tmp_path):
    """A library user (no CLI pre-check): a folder that cannot be created is a UsageError naming it, not an OSError."""
    from rlp_trl.lock import OutputDirLock
    from rlp_trl.usage import UsageError

    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match=r"output_dir .*file/out: cannot write there"):
        OutputDirLock(str(tmp_path / "file" / "out")).acquire()


def test_a_list_of_strings_is_a_corpus_and_other_types_name_what_to_pass(tmp_path, tiny_model_dir):
    from rlp_trl import RLPTrainer
    from rlp_trl.data import as_dataset
    from rlp_trl.usage import UsageError

    trainer = RLPTrainer(tiny_model_dir, args=tiny_config(tmp_path, max_steps=1), train_dataset=tiny_corpus(12))
    assert trainer.position_stats.documents == 12 and len(trainer.train_dataset) > 0
    assert as_dataset([{"text": "a b"}, {"text": "c"}])["text"] == ["a b", "c"]
    with pytest.raises(UsageError, match=r"train_dataset is a str; .*load_documents"):
        as_dataset("docs.jsonl")
    with pytest.raises(UsageError, match="mixing int, str"):
        as_dataset(["a", 1])


# ------------------------------------------------------------------------- issue 21, item 3: misspelled names
@pytest.mark.parametrize("case", ["yaml_num_generation", "yaml_learning_rte", "flag", "negative_number"])
def test_misspelled_config_keys_and_flags_say_did_you_mean(case, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    if case == "yaml_num_generation":  # was: "groups of G = 16 ... not a multiple of 16", a default never chosen
        config.write_text("num_generation: 2\n")
        argv, expect = ["--config", str(config)], "unknown option 'num_generation'; did you mean num_generations?"
    elif case == "yaml_learning_rte":  # was: a message about TRL's fail_with_unknown_args
        config.write_text("learning_rte: 1.0e-5\n")
        argv, expect = ["--config", str(config)], "unknown option 'learning_rte'; did you mean learning_rate?"
    elif case == "flag":
        argv, expect = ["--learning_rte", "1e-5"], "unknown option --learning_rte; did you mean --learning_rate?"
    else:  # argparse took -1e-5 for an option ("expected one argument"); now the value reaches RLPConfig's check
        argv, expect = ["--learning_rate", "-1e-5"], "learning_rate must be a finite number >= 0, got -1e-05"
    code, err = run_train(capsys, [*argv, "--output_dir", str(tmp_path / "out")])
    line = one_error_line(err)
    assert code == 2 and expect in line, line
    assert "fail_with_unknown_args" not in line and "multiple of 16" not in line


def test_negative_numbers_after_a_flag_are_values(tmp_path):
    from rlp_trl.tools.train import parse_training_args

    _, args, _, _ = parse_training_args(["--output_dir", str(tmp_path), "--max_grad_norm", "-1e-1", "--seed", "-3"])
    assert args.seed == -3 and args.max_grad_norm == pytest.approx(-0.1)


# ------------------------------------------------------------------------- issue 21, item 4: --help
def test_help_lists_each_boolean_once(capsys):
    from rlp_trl.tools.train import cli, parse_training_args

    with pytest.raises(SystemExit):
        cli(["--help"])
    out = capsys.readouterr().out
    negated = [line for line in out.splitlines() if re.match(r"\s+--no_(?!think_baseline)", line)]
    assert negated == [], negated  # 19 entries repeated the positive flag's help with "(default: False)"
    assert "--no_<option> is the same as --<option> false" in " ".join(out.split())
    _, _, _, run = parse_training_args(["--no_handle_signals", "--output_dir", "x"])  # still accepted
    assert run.handle_signals is False


# ------------------------------------------------------------------------- issue 21, item 5: torchrun without use_cpu
def test_torchrun_on_cpu_without_use_cpu_names_the_real_cause(tmp_path, tiny_model_dir, docs_jsonl):
    """Two ranks that did not form one distributed run: each says so (before loading the model), instead of rank 1
    being refused by the lock as if its sibling were "another run"."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    fast = FAST[2:]
    assert FAST[:2] == ["--use_cpu", "true"]
    cmd = [torchrun, "--nproc_per_node", "2", "-m", "rlp_trl.tools.train", "--model_name_or_path", tiny_model_dir,
           "--dataset_name", docs_jsonl, "--output_dir", str(tmp_path / "out"), *fast]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "in use by another run" not in proc.stderr
    assert proc.stderr.count("did not join one distributed run") == 2, proc.stderr[-3000:]
    assert "--use_cpu true" in proc.stderr


def test_claiming_the_output_dir_checks_the_launch(tmp_path, monkeypatch):
    """Library users reach the same check when train() claims the folder (before the lock)."""
    from rlp_trl.resilience import claimed_output_dir
    from rlp_trl.usage import UsageError

    class OneProcess:
        num_processes, is_main_process = 1, True

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with (pytest.raises(UsageError, match="rank 1 of 2 .* did not join one distributed run"),
          claimed_output_dir(OneProcess(), str(tmp_path / "out"), None)):
        pass
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- issue 21, items 2 and 7: the docs
def test_copied_single_process_commands_use_accelerate_quiet():
    """Under `accelerate launch` a user error is followed by accelerate's CalledProcessError traceback unless `-q`."""
    for path in ("README.md", "Makefile", "docs/quickstart.md", "examples/train_rlp.py"):
        text = open(os.path.join(REPO, path), encoding="utf-8").read()
        commands = [line for line in text.splitlines() if re.match(r"^\s*(\$\(VENV\)/bin/)?accelerate launch ", line)
                    and "--num_processes 8" not in line and "--config_file" not in line]
        assert commands, path
        assert all(re.search(r"accelerate launch -q ", line) for line in commands), (path, commands)


def test_docs_stand_alone_and_say_what_the_metrics_mean():
    docs = [os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs")) if f.endswith(".md")]
    for path in ["README.md", *docs]:
        assert "../shared" not in open(os.path.join(REPO, path), encoding="utf-8").read(), path
    quickstart = open(os.path.join(REPO, "docs", "quickstart.md"), encoding="utf-8").read()
    table = quickstart.split("## Reading the metrics")[1].split("\n\n")[2]
    assert table.splitlines()[0] == "| metric | meaning | good is |"
    for metric in ("rlp/nonfinite_rewards", "rlp/runaway_flags", "rlp/skipped_steps", "completions/*",
                   "rlp/reader_nll", "rlp/nothink_nll"):
        assert f"`{metric}`" in table, metric
    assert "almost every thought runs to the length limit" not in quickstart
    cluster = open(os.path.join(REPO, "docs", "cluster.md"), encoding="utf-8").read()
    for flag in ("--num_machines", "--machine_rank", "--main_process_ip", "--nnodes", "--node_rank"):
        assert flag in cluster, flag
    assert "has not run at the paper's scale" in cluster and "## A smaller budget" in cluster


def test_the_demo_does_not_wait_for_deepspeed_and_does_not_silently_retrain():
    """`make demo` never builds DeepSpeed's CPU extensions (the distributed tests do); its config resumes with `auto`,
    so a second `make demo` reports the finished run instead of training over it, and says what it leaves on disk."""
    import subprocess

    plan = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "create_op_builder" not in plan and "train_rlp.py" in plan
    test_plan = subprocess.run(["make", "-n", "-W", "setup.cfg", "test-main"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout
    assert "create_op_builder" in test_plan  # the suite still builds them
    import yaml

    demo = yaml.safe_load(open(os.path.join(REPO, "examples", "configs", "demo_cpu.yaml"), encoding="utf-8"))
    assert demo["resume_from_checkpoint"] == "auto"
    assert "GB" in open(os.path.join(REPO, "examples", "configs", "demo_cpu.yaml"), encoding="utf-8").read()
