"""Hostile inputs through the CLI, the way a careless or malicious user gives them: names with control
characters, wrong-typed, NaN and huge numbers, truncated and wrong-kind JSON files, bad config.json fields,
output paths that are the command's own inputs. Every one must end in exit code 2, exactly one line on
stderr ("Error: ..."), no traceback, and no file written or changed."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from _helpers import with_changes
from click.testing import CliRunner

from planner.cli import main
from planner.models import CATALOG

ROOT = Path(__file__).resolve().parents[1]
T4 = ROOT / "profiles" / "datasheet" / "t4.json"

TINY = dict(CATALOG["opt-125m"].to_dict(), name="tiny-opt", hidden_size=64, num_layers=3, num_heads=4,
            num_kv_heads=4, head_dim=16, intermediate_size=128, vocab_size=101, max_position_embeddings=64)
RAM = {"device": 1.0, "host": 0.0, "disk": 0.0}


def tiny_plan() -> dict:
    return {
        "schema_version": 1, "model": dict(TINY),
        "inputs": {"model": "tiny-opt", "seq": 40, "prompt": 24, "gen": 16, "batch": 4, "dtype": "float32"},
        "decisions": {"strategy": "resident", "dtype": "float32", "batch": 4, "gpu_batch": 2, "num_gpu_batches": 2,
                      "split_tokens": 0, "kv_placement": dict(RAM), "x_placement": dict(RAM),
                      "weight_placement": dict(RAM), "attention_where": "device"},
    }


OPT_CONFIG = {"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "ffn_dim": 128, "vocab_size": 100, "max_position_embeddings": 128, "torch_dtype": "float32"}
LLAMA_CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100,
                "max_position_embeddings": 128, "rope_theta": 10000.0, "torch_dtype": "float32"}

# ---- file makers: each writes into the case's folder and returns the path as the CLI argument ----------------

def put(d: Path, name: str, obj) -> str:
    path = d / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def plan_with(**changes) -> Callable[[Path], str]:
    """A tiny plan with a__b__c = value set (deleted when the value is KeyError)."""

    def make(d: Path) -> str:
        return put(d, "plan.json", with_changes(tiny_plan(), changes, sep="__"))

    return make


def plan_text(mutate: Callable[[str], str]) -> Callable[[Path], str]:
    return lambda d: put(d, "plan.json", mutate(json.dumps(tiny_plan())))


def config(base: dict, **changes) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        cfg = copy.deepcopy(base)
        for k, v in changes.items():
            if v is KeyError:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        return put(d, "model/config.json", cfg)

    return make


def profile(d: Path) -> str:
    return put(d, "P.json", T4.read_text())


_SOLVED: list[str] = []  # the solved plan's text, made once


def profile_with(**device) -> Callable[[Path], str]:
    """The T4 datasheet profile with some of its "device" fields replaced."""

    def make(d: Path) -> str:
        data = json.loads(T4.read_text())
        data["device"].update(device)
        return put(d, "P.json", data)

    return make


def solved_plan(d: Path) -> str:
    """A plan as kvplan solve writes it (prediction, baselines, solver), for explain's cases."""
    if not _SOLVED:
        result = CliRunner().invoke(main, ["solve", "--model", "opt-125m", "--seq", "512", "--gpu", "t4", "-o",
                                           str(d / "solved.json")], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        _SOLVED.append((d / "solved.json").read_text())
    return put(d, "solved.json", _SOLVED[0])


def solved_with(**changes) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        path = Path(solved_plan(d))
        path.write_text(json.dumps(with_changes(json.loads(path.read_text()), changes, sep="__")))
        return str(path)

    return make


def linked_to(make: Callable[[Path], str], name: str, link=os.symlink) -> Callable[[Path], str]:
    """The file `make` writes, reached through `name`: a symbolic link (or a hard link: link=os.link)."""

    def made(d: Path) -> str:
        link(make(d), d / name)
        return str(d / name)

    return made


def run_record(**measured) -> Callable[[Path], str]:
    return lambda d: put(d, "run.json", {"plan": {"model": "opt-125m", "seq": 1024},
                                         "predicted": {"decode_step_s": 0.01}, "measured": measured})


SOLVE = ["solve", "--model", "opt-125m", "--seq", "512", "--gpu", "t4"]
REPORT = ["report", "--models", "opt-125m", "--gpus", "t4", "--seqs", "1k"]


def _args(parts: list, d: Path) -> list[str]:
    return [p(d) if callable(p) else str(p) for p in parts]


# ---- the corpus: (id, argv with file makers, marks) -------------------------------------------------------

CASES: list[tuple[str, list, tuple]] = [
    # names with control characters
    ("model name with a newline", ["solve", "--model", "opt\n125m", "--seq", "512", "--gpu", "t4"], ()),
    ("model name with an escape sequence", ["solve", "--model", "\x1b[31mred", "--seq", "512", "--gpu", "t4"], ()),
    ("model name with a carriage return", ["models", "x\rOK opt-125m"], ()),
    ("predict model name with a newline", ["predict", "--model", "a\nb", "--gpu", "t4", "--tokens", "1"], ()),
    ("gpu name with a newline", ["solve", "--model", "opt-125m", "--seq", "512", "--gpu", "t4\nError: fake"], ()),
    ("report model name with a newline", [*REPORT[:2], "bad\nname", *REPORT[3:], "-o", lambda d: str(d / "r")], ()),
    ("plan path with a newline", ["explain", lambda d: str(d / "no\nsuch.json")], ()),
    ("profile path with a newline", [*SOLVE[:5], "--profile", lambda d: str(d / "p\n.json")], ()),
    ("plan model name with a newline, wrong model", ["execute", plan_with(model__name="a\nb",
                                                                          inputs__model="opt-13b")], ()),
    ("click error echoing a newline", ["solve", "--model", "opt-125m", "--seq", "5\n12", "--gpu", "t4"], ()),
    # wrong-typed, NaN and huge numbers in a plan
    ("plan hidden_size a string", ["execute", plan_with(model__hidden_size="768")], ()),
    ("plan hidden_size a float", ["execute", plan_with(model__hidden_size=64.0)], ()),
    ("plan model name an integer", ["explain", plan_with(model__name=5)], ()),
    ("plan num_layers 12.5", ["explain", plan_with(model__num_layers=12.5)], ()),
    ("plan num_layers 0", ["execute", plan_with(model__num_layers=0)], ()),
    ("plan num_layers negative", ["execute", plan_with(model__num_layers=-3)], ()),
    ("plan vocab_size 10^30", ["execute", plan_with(model__vocab_size=10**30)], ()),
    ("plan rope_theta NaN", ["execute", plan_text(lambda t: t.replace('"rope_theta": 0.0', '"rope_theta": NaN'))], ()),
    ("plan seq a string", ["execute", plan_with(inputs__seq="40")], ()),
    ("plan seq 1e23", ["execute", plan_with(inputs__seq=1e23)], ()),
    ("plan seq 10^23", ["execute", plan_with(inputs__seq=10**23)], ()),
    ("plan gen negative", ["execute", plan_with(inputs__gen=-1)], ()),
    ("plan prompt + gen past seq", ["execute", plan_with(inputs__gen=30)], ()),
    ("plan batch true", ["execute", plan_with(decisions__batch=True)], ()),
    ("plan batch 0", ["execute", plan_with(decisions__batch=0)], ()),
    ("plan gpu_batch x num_gpu_batches != batch", ["execute", plan_with(decisions__gpu_batch=3)], ()),
    ("plan split past seq", ["execute", plan_with(decisions__split_tokens=41)], ()),
    ("plan split negative", ["execute", plan_with(decisions__split_tokens=-1)], ()),
    ("plan fractions sum to 0.7", ["execute", plan_with(decisions__kv_placement={"device": 0.5, "host": 0.0,
                                                                                 "disk": 0.2})], ()),
    ("plan fraction missing a tier", ["execute", plan_with(decisions__kv_placement={"device": 1.0, "disk": 0.0})], ()),
    ("plan fraction a string", ["execute", plan_with(decisions__kv_placement={"device": "1", "host": 0, "disk": 0})],
     ()),
    ("plan fraction Infinity", ["execute", plan_text(lambda t: t.replace('"disk": 0.0', '"disk": Infinity', 1))], ()),
    ("plan fractions out of [0, 1]", ["execute", plan_with(decisions__weight_placement={"device": 1.5, "host": -0.5,
                                                                                         "disk": 0.0})], ()),
    ("plan unknown strategy", ["execute", plan_with(decisions__strategy="magic")], ()),
    ("plan unknown dtype", ["execute", plan_with(decisions__dtype="int8")], ()),
    ("plan attention on a gpu", ["execute", plan_with(decisions__attention_where="gpu")], ()),
    ("plan schema_version a string", ["explain", plan_with(schema_version="1")], ()),
    ("plan without decisions", ["execute", plan_with(decisions=KeyError)], ()),
    ("plan model a list", ["execute", plan_with(model=[1, 2])], ()),
    ("plan inputs.model an integer", ["execute", plan_with(inputs__model=42)], ()),
    ("solved plan negative step time", ["explain", solved_with(prediction__decode_step_s=-1.0)], ()),
    ("solved plan without prediction", ["explain", solved_with(prediction=KeyError)], ()),
    ("solved plan feasible baseline without numbers", ["explain", solved_with(baselines__resident={"feasible": True})],
     ()),
    ("solved plan hedge of two scales", ["explain", solved_with(solver__split_hedge={
        "disk_time_scales": [1, 2], "nominal_split_tokens": 0, "worst_regret_pct": 0,
        "nominal_worst_regret_pct": 0})], ()),
    # truncated and wrong-kind JSON files
    ("plan truncated", ["explain", plan_text(lambda t: t[: len(t) // 2])], ()),
    ("plan is a list", ["explain", lambda d: put(d, "plan.json", [tiny_plan()])], ()),
    ("plan is empty", ["execute", lambda d: put(d, "plan.json", "")], ()),
    ("plan is not UTF-8", ["explain", lambda d: put(d, "plan.json", b"\xff\xfe{\x00")], ()),
    ("plan is a profile", ["explain", profile], ()),
    ("plan path is a folder", ["execute", lambda d: str(d)], ()),
    ("plan nested 100,000 deep", ["explain", lambda d: put(d, "plan.json", "[" * 100_000)], ()),
    ("plan with a 5,000-digit number", ["explain", lambda d: put(d, "plan.json", '{"x": ' + "9" * 5000 + "}")], ()),
    ("profile is a plan", [*SOLVE[:5], "--profile", plan_with()], ()),
    ("profile truncated", [*SOLVE[:5], "--profile", lambda d: put(d, "P.json", T4.read_text()[:300])], ()),
    ("run record truncated", [*REPORT, "--runs", lambda d: put(d, "run.json", '{"measured": {'),
                              "-o", lambda d: str(d / "r")], ()),
    ("run record is a plan", [*REPORT, "--runs", plan_with(), "-o", lambda d: str(d / "r")], ()),
    ("run record step time a string", [*REPORT, "--runs", run_record(decode_step_s="fast"),
                                       "-o", lambda d: str(d / "r")], ()),
    ("run record step time negative", [*REPORT, "--runs", run_record(decode_step_s=-0.5),
                                       "-o", lambda d: str(d / "r")], ()),
    ("execute a run record", ["execute", run_record(decode_step_s=0.01)], ()),
    ("model config is a list", [*SOLVE[:2], lambda d: put(d, "model/config.json", [OPT_CONFIG]), *SOLVE[3:]], ()),
    # bad config.json fields
    ("config head_dim a string", [*SOLVE[:2], config(LLAMA_CONFIG, head_dim="16"), *SOLVE[3:]], ()),
    ("config rope_theta NaN", [*SOLVE[:2], lambda d: put(d, "model/config.json", json.dumps(LLAMA_CONFIG).replace(
        "10000.0", "NaN")), *SOLVE[3:]], ()),
    ("config num_hidden_layers 12.5", [*SOLVE[:2], config(OPT_CONFIG, num_hidden_layers=12.5), *SOLVE[3:]], ()),
    ("config hidden_size a string", [*SOLVE[:2], config(OPT_CONFIG, hidden_size="64"), *SOLVE[3:]], ()),
    ("config vocab_size 0", [*SOLVE[:2], config(OPT_CONFIG, vocab_size=0), *SOLVE[3:]], ()),
    ("config zero heads", [*SOLVE[:2], config(LLAMA_CONFIG, num_attention_heads=0), *SOLVE[3:]], ()),
    ("config torch_dtype a list", [*SOLVE[:2], config(OPT_CONFIG, torch_dtype=["float16"]), *SOLVE[3:]],
     ()),
    ("config mixture of experts", [*SOLVE[:2], config(LLAMA_CONFIG, num_local_experts=8), *SOLVE[3:]], ()),
    ("config unknown model_type", [*SOLVE[:2], config(LLAMA_CONFIG, model_type="gpt-neox"), *SOLVE[3:]], ()),
    ("config hidden_size 10^30", [*SOLVE[:2], config(OPT_CONFIG, hidden_size=10**30), *SOLVE[3:]], ()),
    ("execute a gemma2-family plan", ["execute", plan_with(model__family="gemma2"), "--steps", "1"], ()),
    ("profile memory a string", [*SOLVE[:5], "--profile", profile_with(memory_bytes="16GB")], ()),
    ("profile memory negative", [*SOLVE[:5], "--profile", profile_with(memory_bytes=-1)], ()),
    ("profile memory true", [*SOLVE[:5], "--profile", profile_with(memory_bytes=True)], ()),
    ("profile memory 10^40 bytes", [*SOLVE[:5], "--profile", profile_with(memory_bytes=10**40)], ()),
    ("profile peak a string", [*SOLVE[:5], "--profile", profile_with(peak_tflops={"float16": "65"})], ()),
    ("execute alibi positions", ["execute", plan_with(model__position_encoding="alibi"), "--steps", "1"], ()),
    # output paths that are inputs, empty output names
    ("solve -o the profile", [*SOLVE[:5], "--profile", profile, "-o", lambda d: str(d / "P.json")], ()),
    ("solve -o a symlink to the profile", [*SOLVE[:5], "--profile", profile, "-o", linked_to(profile, "L.json")],
     ()),
    ("solve -o a hard link to the profile", [*SOLVE[:5], "--profile", profile, "-o",
                                             linked_to(profile, "H.json", os.link)], ()),
    ("solve -o new/../profile", [*SOLVE[:5], "--profile", profile, "-o", lambda d: str(d / "new" / ".." / "P.json")],
     ()),
    ("solve -o the model's config.json", [*SOLVE[:2], config(OPT_CONFIG), *SOLVE[3:], "-o",
                                          lambda d: str(d / "model" / "config.json")], ()),
    ("solve -o config.json of a model folder", [*SOLVE[:2], lambda d: str(Path(config(OPT_CONFIG)(d)).parent),
                                                *SOLVE[3:], "-o", lambda d: str(d / "model" / "config.json")], ()),
    ("solve -o ''", [*SOLVE, "-o", ""], ()),
    ("execute --out the plan", ["execute", plan_with(), "--out", lambda d: str(d / "plan.json")], ()),
    ("execute --out a symlink to the plan", ["execute", plan_with(), "--out", linked_to(plan_with(), "l.json")], ()),
    ("execute --out the profile", ["execute", plan_with(), "--profile", profile, "--out",
                                   lambda d: str(d / "P.json")], ()),
    ("execute --out ''", ["execute", plan_with(), "--out", ""], ()),
    ("report -o ''", [*REPORT, "-o", ""], ()),
    ("report -o the folder of a run record", [*REPORT, "--runs", lambda d: put(d, "r/run.json", {}), "-o",
                                              lambda d: str(d / "r")], ()),
    ("profile -o ''", ["profile", "--smoke", "--cpu", "-o", ""], ()),
    ("demo -o a folder whose plan.json is the profile", ["demo", "--profile", lambda d: put(d, "dm/plan.json", "{}"),
                                                         "-o", lambda d: str(d / "dm")], ()),
    ("schema -o ''", ["schema", "plan", "-o", ""], ()),
    # numbers on the command line
    ("report --seqs 1e23", [*REPORT[:5], "--seqs", "1e23", "-o", lambda d: str(d / "r")], ()),
    ("report --seqs 0", [*REPORT[:5], "--seqs", "0", "-o", lambda d: str(d / "r")], ()),
    ("report --jobs 0", [*REPORT, "--jobs", "0", "-o", lambda d: str(d / "r")], ()),
    ("execute --steps 0", ["execute", plan_with(), "--steps", "0"], ()),
    ("execute --layers 0", ["execute", plan_with(), "--layers", "0"], ()),
    ("execute --steps -1", ["execute", plan_with(), "--steps", "-1"], ()),
    ("execute --threads 0", ["execute", plan_with(), "--threads", "0", "--steps", "1"], ()),
    ("solve --seq 0", ["solve", "--model", "opt-125m", "--seq", "0", "--gpu", "t4"], ()),
    ("solve --seq 10^20", ["solve", "--model", "opt-125m", "--seq", "99999999999999999999", "--gpu", "t4"], ()),
    ("solve --seq abc", ["solve", "--model", "opt-125m", "--seq", "abc", "--gpu", "t4"], ()),
    ("solve --batch 1e3", [*SOLVE, "--batch", "1e3"], ()),
    ("solve --gpu-mem 1e30GB", [*SOLVE, "--gpu-mem", "1e30GB"], ()),
    ("solve --gpu-mem nan", [*SOLVE, "--gpu-mem", "nan"], ()),
    ("solve --gen 0", [*SOLVE, "--gen", "0"], ()),
    ("predict --tokens 0", ["predict", "--model", "opt-125m", "--gpu", "t4", "--tokens", "0"], ()),
    ("models --batch 0", ["models", "opt-125m", "--batch", "0"], ()),
    ("unknown option", ["solve", "--bogus"], ()),
]


def _tree(folder: Path) -> dict[str, tuple]:
    """Every path under `folder` with its kind, size, inode and modification time (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(folder))] = (st.st_mode, st.st_size, st.st_ino, st.st_mtime_ns)
    return out


@pytest.fixture
def case_dir(tmp_path, monkeypatch):
    """The case's own folder, also the working directory (a default output would land in it); the temp
    directory is tmp_path/tmp, which must stay empty."""
    d = tmp_path / "case"
    d.mkdir()
    (tmp_path / "tmp").mkdir()
    monkeypatch.chdir(d)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr("runtime.predict.find_local_profile", lambda: None)
    monkeypatch.setattr("planner.profile.find_local_profile", lambda: None)
    return d


@pytest.mark.parametrize(
    "argv", [pytest.param(argv, id=name, marks=marks) for name, argv, marks in CASES]
)
def test_hostile_input_is_one_line_and_writes_nothing(argv, case_dir):
    args = _args(argv, case_dir)
    before = _tree(case_dir)
    result = CliRunner().invoke(main, args)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert _tree(case_dir) == before, "the command wrote or changed a file"
    assert list((case_dir.parent / "tmp").iterdir()) == [], "the command left temporary files"


def test_the_corpus_is_large_and_names_are_unique():
    names = [name for name, _, _ in CASES]
    assert len(set(names)) == len(names) >= 60


def test_escaped_names_show_the_control_characters(run_cli):
    """The injected text stays on the error's own line, visibly escaped."""
    result = run_cli("solve", "--model", "opt\nError: all good", "--seq", "512", "--gpu", "t4")
    assert result.stderr == "Error: unknown model 'opt\\nError: all good'; run 'kvplan models' for the list\n"


def test_missing_output_folder_is_not_made_for_a_refused_output(tmp_path, monkeypatch):
    """`-o new/../P.json` is refused before the writer would make the folder `new`."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(T4, tmp_path / "P.json")
    result = CliRunner().invoke(main, [*SOLVE[:5], "--profile", "P.json", "-o", "new/../P.json"])
    assert result.exit_code == 2 and not (tmp_path / "new").exists()
    assert (tmp_path / "P.json").read_text() == T4.read_text()


def test_config_without_kv_heads_is_multi_head_attention(tmp_path, monkeypatch):
    """transformers reads an absent or null num_key_value_heads as num_attention_heads (MHA): so do we."""
    monkeypatch.chdir(tmp_path)
    cfg = dict(LLAMA_CONFIG, num_key_value_heads=None)
    put(tmp_path, "m/config.json", cfg)
    result = CliRunner().invoke(main, ["models", "m/config.json", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["num_kv_heads"] == cfg["num_attention_heads"]


def test_no_command_prints_the_help_not_an_error_line():
    """Usage errors are one line, but plain `kvplan` still shows click's help (exit 2, as click does)."""
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 2 and "Commands:" in result.output and "Error" not in result.output


HOSTILE_NAME = "opt\x1b[31mX\nY"  # a terminal escape and a newline inside a model name
SHOWN_NAME = "opt\\x1b[31mX\\nY"


def _name_line(stdout: str) -> str:
    """The output's first line holding the name, which must be shown escaped and nowhere raw (click
    drops the escape sequence itself when stdout is not a terminal, but not the newline)."""
    assert "\x1b" not in stdout and "mX\nY" not in stdout, stdout
    lines = [line for line in stdout.splitlines() if SHOWN_NAME in line]
    assert lines, stdout
    return lines[0]


def test_names_from_a_config_print_escaped(tmp_path, run_cli):
    cfg = put(tmp_path, "m/config.json", dict(OPT_CONFIG, _name_or_path=HOSTILE_NAME))
    models = run_cli("models", cfg)
    assert models.exit_code == 0, models.output
    assert _name_line(models.stdout).startswith(f"{SHOWN_NAME}: opt, 2 layers")
    predicted = run_cli("predict", "--model", cfg, "--gpu", "t4", "--tokens", "1")
    assert predicted.exit_code == 0, predicted.output
    assert _name_line(predicted.stdout).startswith(f"{SHOWN_NAME} on t4 ")


def test_names_from_a_plan_print_escaped(tmp_path, run_cli):
    path = Path(solved_with(model__name=HOSTILE_NAME, inputs__model=HOSTILE_NAME)(tmp_path))
    explained = run_cli("explain", path)
    assert explained.exit_code == 0, explained.output
    assert _name_line(explained.stdout).startswith(f"Plan: {SHOWN_NAME} on t4 ")
    exported = run_cli("export", path, "--to", "accelerate", "-o", tmp_path / "run.py")
    assert exported.exit_code == 0, exported.output
    assert _name_line(exported.stdout).startswith(f"{SHOWN_NAME} on t4, ")
    # the snippet's first line is a comment: a raw newline in the name would end it and start code
    assert (tmp_path / "run.py").read_text().splitlines()[0].startswith(f"# kvplan export: {SHOWN_NAME} for ")


def test_execute_header_prints_the_plan_name_escaped(tmp_path, run_cli):
    plan = plan_with(model__name=HOSTILE_NAME, inputs__model=HOSTILE_NAME)(tmp_path)
    result = run_cli("execute", plan, "--steps", "1", "--quiet", "--disk-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert _name_line(result.stdout).startswith(f"{SHOWN_NAME}: batch 4")
