"""The command lines: outputs users script against, one grammar for both, and clean failures."""

import ast
import inspect
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import make_folder_dataset

from edgetl.cli import main as host
from edgetl.runtime import errors
from edgetl.runtime.cli import main as rt
from edgetl.runtime.cli.bench import SINGLE_CELL_KEYS, single_cell_figures
from edgetl.runtime.cli.group import error_line
from edgetl.runtime.cli.options import THREADS_HELP, THREADS_LIST_HELP, optional_data_argument
from edgetl.runtime.engines.latency import latency_stats
from edgetl.runtime.errors import ConfigError, DataError, ExitCode

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
CLIS = {"edgetl": host, "edgetl-rt": rt}
FAST = ["--min-runs", "10", "--min-seconds", "0.1", "--warmup-runs", "2"]


def commands(group: click.Group, prefix: str = ""):
    """(path, command) of every leaf command of ``group``, subgroups included."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):            # lazy groups import a command when asked for it
        command = group.get_command(ctx, name)
        if command.hidden:                       # a moved job's pointer (edgetl-rt compare, pack): no options
            continue
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_console_scripts_are_installed():
    for name in ("edgetl", "edgetl-rt"):
        script = BIN / name if (BIN / name).exists() else shutil.which(name)
        assert script, f"console script {name} is not installed"
        out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "Usage" in out.stdout


def test_evaluate_json_and_accuracy_gate(digits_bundle, digits_folder):
    runner = CliRunner()
    out = runner.invoke(rt, ["evaluate", str(digits_bundle.bundle), str(digits_folder), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert {"accuracy", "n", "per_class", "artifact"} <= set(report)
    gated = runner.invoke(rt, ["evaluate", str(digits_bundle.bundle), str(digits_folder), "--min-accuracy", "0.999",
                               "--json"])
    assert gated.exit_code == ExitCode.BELOW_MIN_ACCURACY == 11
    assert json.loads(gated.stdout)["accuracy"] < 0.999                      # the report comes first
    last = gated.stderr.splitlines()[-1]
    assert last.startswith("error: --min-accuracy: accuracy ") and last.endswith("is below the required 0.999")


def test_predict_json_top_k(digits_bundle, digits_folder):
    images = sorted((digits_folder / "val" / "2").glob("*.png"))[:3]
    out = CliRunner().invoke(rt, ["predict", str(digits_bundle.bundle), *map(str, images), "--top-k", "3", "--json"])
    assert out.exit_code == 0, out.output
    predictions = json.loads(out.stdout)["predictions"]
    assert len(predictions) == 3 and all(len(p["top_k"]) == 3 for p in predictions)
    assert sum(p["label"] == "2" for p in predictions) >= 2


def test_latency_statistics():
    stats = latency_stats([0.001] * 98 + [0.010, 0.020], batch=4)
    assert stats["p50_ms"] == pytest.approx(1.0) and stats["max_ms"] == pytest.approx(20.0)
    assert stats["p99_ms"] > stats["p90_ms"] and stats["throughput_per_s"] == pytest.approx(4000 / stats["mean_ms"])


def test_tampered_bundle_exits_non_zero_with_a_message(digits_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(digits_bundle.bundle, copy)
    with open(copy / "backbone.onnx", "ab") as handle:
        handle.write(b"x")
    out = CliRunner().invoke(rt, ["predict", str(copy), "whatever.png", "--artifact", "onnx"])   # the file it loads
    assert out.exit_code == 3 and "sha256" in out.output and "Traceback" not in out.output


@pytest.mark.parametrize("member", ["learning/features.npz", "head.npz", "check.npz"])
def test_a_tampered_file_the_update_reads_stops_it_before_anything_is_written(digits_bundle, digits_folder, tmp_path,
                                                                           member):
    """Each file update loads on its first run (the shipped learning data, the exported head, the check set the
    measuring uses) is checked against its sha256: a changed byte is exit 3 and no store is created."""
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(digits_bundle.bundle, copy)
    shutil.rmtree(copy / "timings", ignore_errors=True)     # measured by an earlier test: this copy measures again
    data = bytearray((copy / member).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / member).write_bytes(bytes(data))
    shutil.copytree(digits_folder / "val" / "3", tmp_path / "new" / "3")
    out = CliRunner().invoke(rt, ["update", str(copy), str(tmp_path / "new"), "--json"])
    assert out.exit_code == 3 and "sha256" in out.output and member in out.output, out.output
    assert not (copy / "store" / "CURRENT").exists()


def test_finetune_bad_input_exits_non_zero_and_writes_nothing(tmp_path):
    root = make_folder_dataset(tmp_path / "d")
    (root / "b" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = CliRunner().invoke(host, ["finetune", str(root), "--out", str(tmp_path / "run"), "--image-size", "32"])
    assert out.exit_code == DataError.exit_code == 8 and "0.png" in out.output
    assert not (tmp_path / "run").exists()
    single = make_folder_dataset(tmp_path / "single", classes=("only",))
    out = CliRunner().invoke(host, ["finetune", str(single), "--out", str(tmp_path / "run2")])
    assert out.exit_code == DataError.exit_code and "single class" in out.output


def test_data_export_and_lists(tmp_path):
    runner = CliRunner()
    out = runner.invoke(host, ["data", "export", "builtin:digits", str(tmp_path / "d"), "--classes", "3,5"])
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in (tmp_path / "d" / "train").iterdir()) == ["3", "5"]
    assert "builtin:digits" in runner.invoke(host, ["data", "list"]).output
    assert "efficientnet_lite0" in runner.invoke(host, ["backbones"]).output
    bad = runner.invoke(host, ["data", "export", "builtin:digits", str(tmp_path / "e"), "--classes", "x"])
    assert bad.exit_code == DataError.exit_code and "no classes x" in bad.output
    listed = json.loads(runner.invoke(host, ["backbones", "--json"]).stdout)["backbones"]
    assert "efficientnet_lite0" in listed
    exported = runner.invoke(host, ["data", "export", "builtin:digits", str(tmp_path / "f"), "--classes", "3",
                                    "--json"])
    assert exported.exit_code == 0, exported.output
    counts = json.loads(exported.stdout)["images"]
    assert counts == {split: len(list((tmp_path / "f" / split / "3").iterdir())) for split in counts}


def test_host_cli_finetune_and_export(tmp_path):
    runner = CliRunner()
    data = tmp_path / "d"
    runner.invoke(host, ["data", "export", "builtin:digits", str(data), "--classes", "0,1"])
    out = runner.invoke(host, ["finetune", str(data), "--out", str(tmp_path / "run"), "--epochs", "3", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["accuracy"] > 0.9
    out = runner.invoke(host, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "bundle")])
    assert out.exit_code == 0, out.output
    assert "onnx" in out.stdout and (tmp_path / "bundle" / "manifest.json").is_file()
    again = runner.invoke(host, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "bundle")])
    assert again.exit_code != 0 and "--overwrite" in again.output


# One grammar for both command lines.

def test_every_command_of_both_clis_has_json():
    missing = [f"{name} {path}" for name, cli in CLIS.items() for path, command in commands(cli)
               if not any("--json" in p.opts for p in command.params)]
    assert missing == []
    assert {"pack", "compare", "backbones", "data export", "data list", "devices",
            "bench"} <= dict(commands(host)).keys()
    assert {"unpack", "rollback", "build-engine", "history", "doctor", "cluster"} <= dict(commands(rt)).keys()


def test_threads_has_one_meaning_everywhere():
    """An int of at least 1 for the one model a command opens; bench alone takes a list (one cell each)."""
    seen = {}
    for name, cli in CLIS.items():
        for path, command in commands(cli):
            for p in command.params:
                if "--threads" in p.opts:
                    seen[f"{name} {path}"] = p
    assert {"edgetl-rt predict", "edgetl-rt cluster", "edgetl bench", "edgetl-rt bench"} <= set(seen)
    for where, p in seen.items():
        if where.endswith(" bench"):
            assert p.help == THREADS_LIST_HELP, where
        else:
            assert isinstance(p.type, click.IntRange) and p.type.min == 1 and p.help == THREADS_HELP, where


def test_finetune_and_select_declare_their_shared_options_once():
    """The options both commands have mean the same: same flag, type and default; the help is select's, or for
    the options --backbone auto passes on to select, select's prefixed by 'With --backbone auto:'."""
    ctx = click.Context(host)
    params = {name: {p.name: p for p in host.get_command(ctx, name).params if isinstance(p, click.Option)}
              for name in ("finetune", "select")}
    shared = params["finetune"].keys() & params["select"].keys() - {"out", "train_last"}   # different jobs there
    assert {"candidates", "target", "budget_ms", "image_size", "seed", "val_fraction", "skip_bad", "overwrite",
            "cache_dir", "device", "engine", "workers", "compile_pass", "as_json"} <= shared
    for name in shared - {"overwrite"}:            # what is overwritten differs: the run, or the selection folder
        f, s = params["finetune"][name], params["select"][name]
        assert (f.opts, type(f.type), f.default, f.is_flag) == (s.opts, type(s.type), s.default, s.is_flag), name
        if f.help != s.help:
            assert f.help == f"With --backbone auto: {s.help[0].lower()}{s.help[1:]}", name


def test_quiet_and_verbose_on_both_groups():
    for cli in (host, rt):
        names = {opt for p in cli.params for opt in p.opts}
        assert {"-q", "--quiet", "-v", "--verbose"} <= names
    both = CliRunner().invoke(rt, ["-q", "-v", "doctor"])
    assert both.exit_code == 2 and "exclude each other" in both.output


def test_quiet_silences_progress_and_notes_not_errors(digits_bundle, digits_folder):
    args = ["evaluate", str(digits_bundle.bundle), str(digits_folder), "--no-measure", "--json"]
    loud = CliRunner().invoke(rt, args)
    quiet = CliRunner().invoke(rt, ["-q", *args])
    assert loud.exit_code == quiet.exit_code == 0, loud.output + quiet.output
    assert "evaluating" in loud.stderr and quiet.stderr == ""
    assert json.loads(quiet.stdout)["accuracy"] == json.loads(loud.stdout)["accuracy"]
    failed = CliRunner().invoke(rt, ["-q", *args, "--min-accuracy", "1.01"])
    assert failed.exit_code == ExitCode.BELOW_MIN_ACCURACY and failed.stderr.startswith("error: --min-accuracy:")


def test_verbose_says_why_the_artifact_was_chosen(digits_bundle, digits_folder):
    image = str(sorted((digits_folder / "val" / "3").glob("*.png"))[0])
    plain = CliRunner().invoke(rt, ["predict", str(digits_bundle.bundle), image, "--no-measure"])
    verbose = CliRunner().invoke(rt, ["-v", "predict", str(digits_bundle.bundle), image, "--no-measure"])
    assert plain.exit_code == verbose.exit_code == 0, plain.output + verbose.output
    assert "artifact " not in plain.stderr and verbose.stderr.startswith("artifact ")


def test_unexpected_error_is_one_line_and_its_traceback_needs_verbose(monkeypatch):
    import edgetl.runtime.tools.doctor as doctor

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "doctor_report", broken)
    plain = CliRunner().invoke(rt, ["doctor"])
    assert plain.exit_code == ExitCode.ERROR and "Traceback" not in plain.output
    assert plain.stderr.strip() == "error: unexpected RuntimeError: boom (run with -v for the traceback)"
    verbose = CliRunner().invoke(rt, ["-v", "doctor"])
    assert verbose.exit_code == ExitCode.ERROR and "Traceback" in verbose.stderr and "in broken" in verbose.stderr


def test_an_error_about_an_option_names_its_flag(digits_bundle, digits_folder):
    assert error_line(ConfigError("must be at least 1, got 0", option="top_k")) == "--top-k: must be at least 1, got 0"
    assert error_line(ConfigError("no images to evaluate")) == "no images to evaluate"
    assert error_line(ConfigError("out exists; choose another path, or overwrite it", remedy="overwrite")) == \
        "out exists; choose another path, or overwrite it (--overwrite)"
    image = str(sorted((digits_folder / "val" / "3").glob("*.png"))[0])
    out = CliRunner().invoke(rt, ["predict", str(digits_bundle.bundle), image, "--top-k", "0", "--no-measure"])
    assert out.exit_code == ConfigError.exit_code and out.stderr.startswith("error: --top-k")
    assert "Traceback" not in out.output


def test_data_is_positional_and_the_old_option_still_works():
    @click.command()
    @optional_data_argument("Data.")
    def show(data):
        click.echo(repr(data))

    runner = CliRunner()
    assert runner.invoke(show, ["d/"]).stdout.strip() == "'d/'"
    assert runner.invoke(show, ["--data", "d/"]).stdout.strip() == "'d/'"
    assert runner.invoke(show, []).stdout.strip() == "None"
    clash = runner.invoke(show, ["a/", "--data", "b/"])
    assert clash.exit_code == 2 and "given twice" in clash.output
    assert "--data" not in runner.invoke(show, ["--help"]).stdout                      # hidden alias
    assert "[BUNDLE] [DATA]" in CliRunner().invoke(rt, ["bench", "--help"]).stdout
    assert "RUN [DATA]" in CliRunner().invoke(host, ["export", "--help"]).stdout


# Exit codes: one table, one meaning per code, all in docs/exit-codes.md.

def error_classes() -> list[type]:
    found, todo = [], [errors.EdgetlError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return [cls for cls in found if cls.__module__ == errors.__name__]


def test_exit_codes_are_unique_per_meaning():
    classes = error_classes()
    assert {c.__name__ for c in classes} >= {"StoreBusyError", "CudaError", "BelowMinAccuracyError", "DataError",
                                             "ConfigError", "UpdateRejectedError", "AccuracyGateError"}
    by_code = {}
    for cls in classes:
        assert isinstance(cls.exit_code, ExitCode), cls
        assert cls.exit_code not in (ExitCode.OK, ExitCode.USAGE), cls
        by_code.setdefault(cls.exit_code, []).append(cls)
    for code, owners in by_code.items():          # a shared code only within one family (ImageDecodeError)
        roots = [c for c in owners if not any(c is not o and issubclass(c, o) for o in owners)]
        assert len(roots) == 1, (code, owners)
    assert set(by_code) == set(ExitCode) - {ExitCode.OK, ExitCode.USAGE}   # every code has its class
    from edgetl.runtime.bundle.store import StoreBusyError
    from edgetl.runtime.engines.cuda import CudaError

    assert (StoreBusyError.exit_code, CudaError.exit_code) == (ExitCode.STORE_BUSY, ExitCode.CUDA)


@pytest.mark.parametrize("argv, where", [
    (["compare", "bundle", "data", "--limit", "3"], "edgetl compare BUNDLE [DATA]"),
    (["pack", "bundle"], "edgetl pack BUNDLE"),
    (["bench", "--compare", "a.json", "b.json"], "edgetl bench --compare A.json B.json"),
])
def test_jobs_that_moved_to_the_host_say_where(argv, where):
    out = CliRunner().invoke(rt, argv)
    assert out.exit_code == ExitCode.USAGE and f"moved to the host: {where}" in out.output


def test_exit_code_numbers_are_pinned():
    """Scripts branch on the numbers: a renumbering must be a deliberate change of this table."""
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0, "ERROR": 1, "USAGE": 2, "BUNDLE": 3, "EXPORT_VALIDATION": 4, "MISSING_DEPENDENCY": 5,
        "UPDATE_REJECTED": 6, "STORE_BUSY": 7, "DATA": 8, "CONFIG": 9, "EXPORT_ACCURACY": 10,
        "BELOW_MIN_ACCURACY": 11, "CUDA": 12, "SIGNATURE": 13,
    }


def test_the_docs_list_every_exit_code():
    section = (ROOT / "docs" / "exit-codes.md").read_text()
    rows = {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \|(.*)$", section, re.M)}
    assert sorted(rows) == sorted(int(code) for code in ExitCode)
    for cls in error_classes():
        assert f"`{cls.__name__}`" in rows[int(cls.exit_code)], cls


# bench: the figures of a single cell at the top level, as scripts read them.

def test_bench_single_cell_prints_its_figures_at_the_top_level(digits_bundle):
    out = CliRunner().invoke(rt, ["bench", str(digits_bundle.bundle), "--artifacts", "onnx", "--in-process",
                                  "--json", *FAST])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert len(result["rows"]) == 1
    assert {key: result[key] for key in SINGLE_CELL_KEYS} == {key: result["rows"][0][key] for key in SINGLE_CELL_KEYS}
    assert result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] and result["throughput_per_s"] > 0
    two = {"rows": [{key: 1.0 for key in SINGLE_CELL_KEYS}, {key: 2.0 for key in SINGLE_CELL_KEYS}]}
    assert single_cell_figures(two) == {}                      # a matrix has no single headline


def test_cluster_threads_reach_the_model(digits_bundle, digits_folder, tmp_path, monkeypatch):
    import edgetl.runtime.tools.cluster as cluster_module

    seen = []

    class Spy(cluster_module.EdgeModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.backend.describe()["threads"])

    monkeypatch.setattr(cluster_module, "EdgeModel", Spy)
    pool = tmp_path / "pool"
    for digit in ("0", "1"):
        for image in sorted((digits_folder / "val" / digit).glob("*.png"))[:4]:
            (pool / "x").mkdir(parents=True, exist_ok=True)
            shutil.copy(image, pool / "x" / f"{digit}-{image.name}")
    out = CliRunner().invoke(rt, ["cluster", str(digits_bundle.bundle), str(pool), "--k", "2", "--out",
                                  str(tmp_path / "groups"), "--threads", "1", "--no-measure", "--json"])
    assert out.exit_code == 0, out.output
    assert seen == [1] and json.loads(out.stdout)["n"] == 8


def test_pack_and_unpack_print_json(digits_bundle, tmp_path):
    packed = CliRunner().invoke(host, ["pack", str(digits_bundle.bundle), "--out", str(tmp_path / "b.tar.gz"),
                                       "--json"])
    assert packed.exit_code == 0, packed.output
    archive = json.loads(packed.stdout)["archive"]
    assert Path(archive).is_file()
    unpacked = CliRunner().invoke(rt, ["unpack", archive, str(tmp_path / "device"), "--no-measure", "--json"])
    assert unpacked.exit_code == 0, unpacked.output
    assert json.loads(unpacked.stdout) == {"bundle": str(tmp_path / "device"), "measured": [], "timings": None}


def test_commands_use_every_parameter_they_declare():
    """Every option a command declares is read by its function (``cluster --threads`` was once ignored)."""
    unused = []
    for name, cli in CLIS.items():
        for path, command in commands(cli):
            function = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(command.callback)))).body[0]
            if function.args.kwarg:                        # bench(**options): handed on whole
                continue
            read = {node.id for node in ast.walk(function) if isinstance(node, ast.Name)}
            unused += [f"{name} {path} {p.name}" for p in command.params if p.expose_value and p.name not in read
                       and p.name != "data_alias"]     # merged into data by optional_data_argument
    assert unused == []
