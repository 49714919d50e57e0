"""``build-engine`` through Polygraphy: each TensorRT version's plan turned into Polygraphy's loaders, checked
against a recording stand-in of them that behaves as TensorRT does where it matters (TensorRT 8's ONNX parser
refuses an implicit-batch network; strong typing needs TensorRT 9 or newer)."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_devices import TRT_BUNDLE

from edgetl.runtime.engines.sidecar import parse_version
from edgetl.runtime.tools import engine_build
from edgetl.runtime.tools.engine_plan import TIMING_CACHE, plan_build

EXPLICIT_BATCH = 1 << 0
FAKE_TRT = SimpleNamespace(MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"))


class StandIn:
    """Polygraphy's loaders, recorded: nothing is built until the engine loader is called, as in Polygraphy."""

    def __init__(self, tensorrt_version: str):
        self.major = parse_version(tensorrt_version)[0]
        self.calls: dict = {}
        stand_in = self

        class NetworkFromOnnxPath:
            def __init__(self, path, flags=None, strongly_typed=None, **kwargs):
                stand_in.calls["network"] = dict(path=path, flags=flags, strongly_typed=strongly_typed, **kwargs)
                self.flags, self.strongly_typed = flags, strongly_typed

            def __call__(self):
                # Polygraphy's CreateNetwork: explicit batch by default below TensorRT 10, unless flags say otherwise
                explicit = self.flags is None or bool(self.flags & EXPLICIT_BATCH) or stand_in.major >= 10
                if stand_in.major < 10 and not explicit:
                    raise RuntimeError("TensorRT 8 ONNX parser: the network must be created with explicit batch")
                if self.strongly_typed and stand_in.major < 9:
                    raise RuntimeError("STRONGLY_TYPED does not exist before TensorRT 9")
                return "builder", SimpleNamespace(explicit_batch=explicit), "parser"

        class Profile:
            def add(self, name, min, opt, max):       # noqa: A002 - Polygraphy's names
                stand_in.calls.setdefault("profiles", []).append((name, tuple(min), tuple(opt), tuple(max)))
                return self

        class CreateConfig:
            def __init__(self, **kwargs):
                # bound against the real signature: a keyword Polygraphy does not take fails here
                real = pytest.importorskip("polygraphy.backend.trt").CreateConfig.__init__
                inspect.signature(real).bind(None, **kwargs)
                stand_in.calls["config"] = kwargs

            def __call__(self, builder, network):
                return SimpleNamespace(DLA_core=None)

        class PostprocessConfig:
            def __init__(self, config, func):
                self.config, self.func = config, func

            def __call__(self, builder, network):
                config = self.config(builder, network)
                self.func(builder, network, config)
                stand_in.calls["dla_core"] = config.DLA_core
                return config

        class EngineBytesFromNetwork:
            def __init__(self, network, config=None, save_timing_cache=None):
                stand_in.calls["save_timing_cache"] = save_timing_cache
                self.network, self.config = network, config

            def __call__(self):
                builder, network, _ = self.network()
                self.config(builder, network)
                stand_in.calls["built_explicit_batch"] = network.explicit_batch
                return b"serialized engine"

        self.module = SimpleNamespace(NetworkFromOnnxPath=NetworkFromOnnxPath, Profile=Profile,
                                      CreateConfig=CreateConfig, PostprocessConfig=PostprocessConfig,
                                      EngineBytesFromNetwork=EngineBytesFromNetwork)


def _build(monkeypatch, tmp_path: Path, precision: str, version: str, workspace=None, **plan_args):
    stand_in = StandIn(version)
    monkeypatch.setattr(engine_build, "_polygraphy", lambda: stand_in.module)
    plan = plan_build(TRT_BUNDLE, precision, version, **plan_args)
    engine = engine_build.polygraphy_loaders(plan, tmp_path, FAKE_TRT, workspace, tmp_path / "cache.new")()
    return stand_in.calls, engine


def test_tensorrt_8_5_fp16_builds_an_explicit_batch_network_with_the_fp16_flag(monkeypatch, tmp_path):
    calls, engine = _build(monkeypatch, tmp_path, "fp16", "8.5.2", max_batch=8)
    assert engine == b"serialized engine" and calls["built_explicit_batch"]
    assert calls["network"]["path"].endswith("/onnx-fp16.onnx") and calls["network"]["flags"] is None
    assert calls["network"]["strongly_typed"] is False
    config = calls["config"]
    assert config["fp16"] and not config["int8"] and not config["use_dla"] and config["memory_pool_limits"] is None
    assert config["tf32"] is True                         # TensorRT's default, stated (Polygraphy's is off)
    assert calls["profiles"] == [("input", (1, 3, 64, 64), (1, 3, 64, 64), (8, 3, 64, 64))]
    assert config["load_timing_cache"] is None and calls["save_timing_cache"] == str(tmp_path / "cache.new")


def test_tensorrt_10_int8_on_a_dla_core_with_a_workspace_and_the_bundles_timing_cache(monkeypatch, tmp_path):
    (tmp_path / TIMING_CACHE).parent.mkdir(parents=True)
    (tmp_path / TIMING_CACHE).write_bytes(b"cache")
    calls, _ = _build(monkeypatch, tmp_path, "int8", "10.3.0.30", dla_core=1, dla_cores_available=2,
                      workspace=256)
    config = calls["config"]
    assert config["int8"] and config["fp16"] and config["use_dla"] and config["allow_gpu_fallback"]
    assert calls["dla_core"] == 1 and config["memory_pool_limits"] == {"WORKSPACE": 256 << 20}
    assert config["load_timing_cache"] == str(tmp_path / TIMING_CACHE)
    assert calls["network"]["path"].endswith("/onnx-int8-trt.onnx")


def test_tensorrt_11_is_strongly_typed_without_precision_flags(monkeypatch, tmp_path):
    calls, _ = _build(monkeypatch, tmp_path, "int8", "11.4.0")
    assert calls["network"]["strongly_typed"] is True
    assert not calls["config"]["fp16"] and not calls["config"]["int8"] and not calls["config"]["use_dla"]


def test_the_stand_in_fails_the_8x_network_as_build_engine_used_to_create_it():
    """The earlier hand-written build called ``create_network(0)``: TensorRT 8.5's parser refuses that network,
    and so does the stand-in, which is what makes the tests above worth passing."""
    stand_in = StandIn("8.5.2")
    with pytest.raises(RuntimeError, match="explicit batch"):
        stand_in.module.NetworkFromOnnxPath("backbone.onnx", flags=0)()
    _, network, _ = StandIn("10.3").module.NetworkFromOnnxPath("backbone.onnx", flags=0)()
    assert network.explicit_batch                         # TensorRT 10 networks are always explicit batch
