"""The one reader of versioned JSON documents and the typed checks: every wrong type, missing key, unknown
version or damaged file is one line of the caller's error class naming the file and the key."""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field

import pytest

from edgetl.runtime.documents import Origin, Table, build, check, read_document, table_of, to_json, utc_now
from edgetl.runtime.errors import BundleError, ConfigError

ORIGIN = Origin("devices/foo.toml", ConfigError)


@dataclass
class Limits:
    batch: int
    budget_mb: float = 1.0


@dataclass
class Profile:
    name: str
    flags: tuple[str, ...]
    limits: Limits
    strict: bool = False
    gpu: str | None = None
    tags: list[str] = field(default_factory=list)


def _error(value, spec, origin=ORIGIN) -> str:
    with pytest.raises(origin.error) as info:
        check(value, spec, origin)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{origin.name}: ")
    return message[len(origin.name) + 2:]


@pytest.mark.parametrize("value, spec, message", [
    ({"n": "8"}, Table({"n": int}), 'n must be an integer, got the string "8"'),
    ({"n": True}, Table({"n": int}), "n must be an integer, got true"),               # bool is not an integer
    ({"n": 1.0}, Table({"n": int}), "n must be an integer, got the number 1.0"),
    ({"n": 1}, Table({"n": bool}), "n must be true or false, got the integer 1"),
    ({"files": {"head.npz": 7}}, Table({"files": dict[str, str]}),
     "[files] head.npz must be a string, got the integer 7"),
    # nor an integer a bool
    ({"files": ["head.npz"]}, Table({"files": dict[str, str]}), "files must be a table, got a list"),
    ({"n": False}, Table({"n": float}), "n must be a number, got false"),
    ({"n": None}, Table({"n": str}), "n must be a string, got null"),
    ({"n": "x"}, Table({"n": int | None}), 'n must be an integer, got the string "x"'),
    ({"n": [1]}, Table({"n": dict}), "n must be a table, got a list"),
    ({"n": "x" * 50}, Table({"n": int}), f'n must be an integer, got the string "{"x" * 37}..."'),
])
def test_wrong_scalar_types_name_the_key_and_the_value(value, spec, message):
    assert _error(value, spec) == message


def test_right_types_pass_and_an_integer_is_a_number():
    check({"n": 3, "f": 2, "g": 2.5, "b": False, "s": "x", "o": None, "d": {"any": [1]}},
          Table({"n": int, "f": float, "g": float, "b": bool, "s": str, "o": int | None, "d": dict}), ORIGIN)


@pytest.mark.parametrize("value, message", [
    ({"backends": "tensorrt"}, 'backends must be a list of strings, got the string "tensorrt"'),   # not letters
    ({"backends": ["onnxruntime", 3]}, "backends[1] must be a string, got the integer 3"),
    ({"backends": {"a": "b"}}, "backends must be a list of strings, got a table"),
])
def test_a_list_given_as_anything_else_is_refused(value, message):
    assert _error(value, Table({"backends": list[str]})) == message


def test_missing_and_unknown_keys_at_every_depth():
    spec = Table({"name": str, "deploy": Table({"max_batch": int, "memory_budget_mb": int}, optional=("max_batch",))})
    assert _error({"deploy": {"memory_budget_mb": 1}}, spec) == "missing key name"
    assert _error({"name": "x", "deploy": {"max_batch": 8}}, spec) == "missing key [deploy] memory_budget_mb"
    assert _error({"name": "x", "deploy": {"memory_budget_mb": "1"}}, spec) == \
        '[deploy] memory_budget_mb must be an integer, got the string "1"'
    assert _error({"name": "x", "colour": 1, "deploy": {"memory_budget_mb": 1}}, spec) == \
        "unknown key(s) colour (valid: name, deploy)"
    assert _error({"name": "x", "deploy": {"memory_budget_mb": 1, "max_bacth": 2}}, spec) == \
        "[deploy] unknown key(s) max_bacth (valid: max_batch, memory_budget_mb)"
    check({"name": "x", "later": 1}, Table({"name": str}, closed=False), ORIGIN)        # an open table allows more


def test_nested_tables_in_lists_and_dataclasses_name_the_full_path():
    spec = Table({"artifacts": list[Table({"file": str, "companions": list[Table({"size": int})]})]})
    value = {"artifacts": [{"file": "a", "companions": []}, {"file": "b", "companions": [{"size": "3"}]}]}
    assert _error(value, spec) == '[artifacts[1].companions[0]] size must be an integer, got the string "3"'
    assert _error({"name": "x", "flags": [], "limits": {"batch": 1.5}}, Profile) == \
        "[limits] batch must be an integer, got the number 1.5"
    assert _error({"name": "x", "flags": []}, Profile) == "missing key limits"
    assert _error({"name": "x", "flags": [], "limits": []}, Profile) == "limits must be a table, got a list"


def test_an_empty_table_may_stand_for_none():
    spec = Table({"learning": Table({"file": str}, or_empty=True)})
    check({"learning": {}}, spec, ORIGIN)
    assert _error({"learning": {"size": 1}}, spec) == "[learning] unknown key(s) size (valid: file)"


def test_build_converts_to_the_declared_types():
    profile = build(Profile, {"name": "x", "flags": ["avx2"], "limits": {"batch": 8, "budget_mb": 512}}, ORIGIN)
    assert profile == Profile("x", ("avx2",), Limits(8, 512.0))
    assert isinstance(profile.limits.budget_mb, float) and profile.tags == [] and profile.gpu is None
    loose = table_of(Profile, closed=False, limits=Table({"batch": int}, closed=False))
    assert build(Profile, {"name": "x", "flags": [], "limits": {"batch": 1, "new": 2}, "new": 3}, ORIGIN,
                 loose).limits == Limits(1)          # keys a later writer added are left out, not fatal
    with pytest.raises(ValueError, match="no field"):
        table_of(Profile, colour=str)


def _write(tmp_path, data) -> str:
    path = tmp_path / "thing.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _read_error(tmp_path, data, **kwargs) -> str:
    path = _write(tmp_path, data)
    origin = Origin(path, BundleError, "re-export the bundle")
    with pytest.raises(BundleError) as info:
        read_document(path, origin, kwargs.pop("versions", ("edgetl.thing/2",)), what="an edgetl thing", **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and message.endswith("; re-export the bundle")
    return message


@pytest.mark.parametrize("data, kwargs, expected", [
    ({"schema": "edgetl.thing/9"}, {}, 'has schema "edgetl.thing/9": not an edgetl thing this edgetl reads '
                                       '(schema "edgetl.thing/2"; a newer edgetl may read it)'),
    ({"other": 1}, {}, "has no schema: not an edgetl thing"),
    ({"schema_version": 99}, {"key": "schema_version", "versions": (1, 2)}, "has schema version 99: not an "
                                                                            "edgetl thing this edgetl reads "
                                                                            "(schema version 1 or 2"),
    ({"schema_version": True}, {"key": "schema_version", "versions": (1, 2)}, "has schema version true"),
    ("{\"schema\": ", {}, "not valid JSON (Expecting value: line 1 column 12"),
    ("[1, 2]", {}, "not an edgetl thing (it holds a list, not a table)"),
])
def test_foreign_or_damaged_documents_are_one_line_errors(tmp_path, data, kwargs, expected):
    assert expected in _read_error(tmp_path, data, **kwargs)


def test_invalid_utf8_is_a_damaged_document(tmp_path):
    path = tmp_path / "thing.json"
    path.write_bytes(b"{\"schema\": \"\xff\"}")
    with pytest.raises(BundleError, match="thing.json: not valid JSON \\(not UTF-8 text\\)"):
        read_document(path, Origin(str(path), BundleError), ("x",), what="an edgetl thing")


def test_a_readable_document_comes_back_and_a_missing_one_says_so(tmp_path):
    path = _write(tmp_path, {"schema": "edgetl.thing/1", "n": 1})
    origin = Origin(path, ConfigError)
    assert read_document(path, origin, ("edgetl.thing/1", "edgetl.thing/2"), what="a thing")["n"] == 1
    missing = str(tmp_path / "none.json")
    with pytest.raises(ConfigError, match="^.*none.json: no such file$"):
        read_document(missing, Origin(missing, ConfigError), ("x",), what="a thing")
    with pytest.raises(ConfigError, match="^run 'edgetl finetune' first$"):
        read_document(missing, Origin(missing, ConfigError), ("x",), what="a thing",
                      missing="run 'edgetl finetune' first")


def test_utc_now_keeps_the_format_of_the_files():
    stamp = utc_now()
    parsed = _dt.datetime.fromisoformat(stamp)
    assert stamp.endswith("+00:00") and parsed.microsecond == 0 and len(stamp) == len("2026-11-27T02:51:09+00:00")
    assert abs((_dt.datetime.now(_dt.timezone.utc) - parsed).total_seconds()) < 5


def test_to_json_round_trips_through_build():
    profile = Profile("x", ("a", "b"), Limits(2, 0.5), gpu="Orin")
    assert json.loads(to_json(profile))["flags"] == ["a", "b"]
    assert build(Profile, json.loads(to_json(profile)), ORIGIN) == profile


# --- the readers that use it ----------------------------------------------------------------------------------

def test_timings_rows_are_typed_and_version_1_rows_came_from_bench(tmp_path):
    from edgetl.runtime.bundle.timings import TIMINGS_FOLDER, machine_key, read_timings

    (tmp_path / TIMINGS_FOLDER).mkdir()
    path = tmp_path / TIMINGS_FOLDER / f"{machine_key()[0]}.json"
    row = {"artifact": "onnx", "backend": "onnxruntime", "p50_ms": 2, "figure_from_later": 1}
    path.write_text(json.dumps({"schema": "edgetl.timings/1", "rows": [row]}))
    timing = read_timings(tmp_path).get("onnx", "onnxruntime")
    assert timing.source == "bench" and timing.p50_ms == 2.0 and isinstance(timing.p50_ms, float)
    path.write_text(json.dumps({"schema": "edgetl.timings/2", "rows": [{**row, "p50_ms": "fast"}]}))
    expected = '[rows[0]] p50_ms must be a number, got the string "fast"; delete it or record again with'
    with pytest.raises(BundleError, match=f"^{re.escape(f'{path}: {expected}')} edgetl-rt bench .* --record$"):
        read_timings(tmp_path)


def test_a_run_description_with_a_wrong_type_names_the_file_and_key(tmp_path):
    from edgetl.run import RUN_SCHEMA, RunManifest
    from edgetl.runtime.errors import EdgetlError

    run = {"schema": RUN_SCHEMA, "edgetl_version": "0", "created": utc_now(), "data_address": "builtin:digits",
           "class_names": ["a", "b"], "split": {}, "train_sources": [], "val_sources": [],
           "backbone": {"name": "tiny", "weights_sha256": "ab", "feature_dim": "8", "train_last": 0},
           "preprocess": {"input_size": 8, "resize_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3},
           "head": {"kind": "linear"}, "compute": {}, "cache": {}, "timings": {}, "val_accuracy": 1}
    (tmp_path / "manifest.json").write_text(json.dumps(run))
    expected = f'{tmp_path / "manifest.json"}: [backbone] feature_dim must be an integer, got the string "8"; '
    with pytest.raises(EdgetlError, match=f"^{re.escape(expected)}"):
        RunManifest.read(tmp_path)
    run["backbone"]["feature_dim"] = 8
    (tmp_path / "manifest.json").write_text(json.dumps(run))
    assert RunManifest.read(tmp_path).val_accuracy == 1.0
