"""Text transfer on banking77, measured in one run (issue 17).

A frozen all-MiniLM-L6-v2 (``minilm-l6``) with a head (``--head``, default mlp) is fine-tuned on ``train.csv`` (10,003
queries, 77 intents; ``--val-fraction`` of it held out for the run's own validation), exported to every text format, and
judged on ``test.csv`` (3,080 queries) through the device runtime:

* test accuracy per artifact (target: fp32 at least 0.93, every gated artifact within 1 point of it);
* the device tokenizer (the bundle's ``tokenizer.json`` through ``edgetl.runtime``) against the host's, token for
  token on every test text: ``transformers``' own tokenizer of the model folder (fast, and the pure-Python
  ``BertTokenizer`` built from ``vocab.txt`` where this ``transformers`` still has it);
* the exported encoder's embeddings against torch (max |difference| over the test texts);
* batch-1 p50 latency per artifact at the median test-text length against eager torch (encoder + head);
* host embedding throughput over the test texts: eager torch against each engine, length-sorted batches of 64;
* on-device learning: a head trained on the host with 60 of the 77 intents, the other 17 learned with
  ``edgetl-rt update`` from their training texts, against the host's 77-intent head (target: within 1 point).

Run: python benchmarks/text_transfer.py [--data data/banking77] [--formats ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import save_result, verdict

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "banking77"
FORMATS = "onnx,onnx-fp16,onnx-int8-dynamic,openvino,openvino-bf16,openvino-int8"
BIN = Path(sys.executable).parent


def _cli(*args: str) -> dict:
    out = subprocess.run([str(BIN / args[0]), *args[1:], "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout)


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((r["text"], r["category"]) for r in rows)
    return path


def _finetune(data: Path, out: Path, val_fraction: float, head: str) -> dict:
    return _cli("edgetl", "finetune", str(data), "--backbone", "minilm-l6", "--head", head, "--out", str(out),
                "--val-fraction", str(val_fraction), "--overwrite")


def _evaluate(bundle: Path, test: Path, artifact: str) -> dict:
    from edgetl.runtime import EdgeModel
    from edgetl.runtime.data.sources import open_data

    with EdgeModel(bundle, artifact=artifact, measure=False) as model:
        data = open_data(test).remap_to(model.labels)
        t0 = time.perf_counter()
        report = model.evaluate(data.split("all"), batch_size=64)
        report["seconds"] = time.perf_counter() - t0
    return report


def _token_parity(bundle: Path, folder: Path, texts: list[str]) -> dict:
    from transformers import AutoTokenizer

    from edgetl.runtime.bundle.folder import Bundle

    device = Bundle(bundle).preprocess
    ours = device.tokens(texts)
    result = {"texts": len(texts), "device_tokenizer": "tokenizers (bundle tokenizer.json)"}
    references = {"transformers_fast": AutoTokenizer.from_pretrained(str(folder))}
    try:
        from transformers import BertTokenizer

        references["transformers_python_wordpiece"] = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        result["python_wordpiece"] = f"unavailable: {exc}"
    for name, tokenizer in references.items():
        theirs = tokenizer(texts, truncation=True, max_length=device.max_length)["input_ids"]
        differing = [i for i, (a, b) in enumerate(zip(ours, theirs)) if list(a) != list(b)]
        result[name] = {"identical": len(texts) - len(differing), "differing": len(differing),
                        "examples": [texts[i] for i in differing[:3]]}
    return result


def _encoder(run_dir: Path):
    import torch

    from edgetl.exporters.bundle import rebuild_feature_model
    from edgetl.heads import torch_head
    from edgetl.run import RunManifest
    from edgetl.runtime.bundle.heads import load_head

    manifest = RunManifest.read(run_dir)
    model, preprocess = rebuild_feature_model(manifest, run_dir)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return model, torch_head(load_head(run_dir / "head.npz")).eval(), preprocess


def _embeddings(model, preprocess, texts: list[str], runner=None, batch: int = 64) -> tuple[np.ndarray, float]:
    """Embeddings of ``texts`` in length-sorted batches (eager torch, or an open runtime backend) and the seconds."""
    import torch

    from edgetl.runtime.data.text import length_sorted

    tokens = preprocess.tokens(texts)
    out = np.zeros((len(texts), 384), np.float32)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for rows in length_sorted(tokens, batch):
            ids = preprocess.pad([tokens[i] for i in rows])
            out[rows] = runner.infer(ids) if runner is not None else model(torch.from_numpy(ids)).numpy()
    return out, time.perf_counter() - t0


def _latency(run, seconds: float) -> float:
    from edgetl.runtime.engines.latency import BenchSettings, latency_stats, measure

    settings = BenchSettings(warmup_runs=20, min_runs=200, min_seconds=seconds)
    return latency_stats(measure(run, settings), 1)["p50_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--formats", default=FORMATS)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--head", default="mlp", help="the host's head (finetune --head)")
    parser.add_argument("--method", default="sgd", help="the device's learning method (edgetl-rt update --method)")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum seconds per latency cell")
    parser.add_argument("--work", type=Path, default=None, help="keep runs and bundles here (default: temporary)")
    parser.add_argument("--reuse", action="store_true", help="reuse the run and bundle already in --work")
    args = parser.parse_args()
    if not (args.data / "train.csv").is_file():
        raise SystemExit(f"banking77 not found at {args.data}")
    import torch

    from edgetl.backbones import create_backbone
    from edgetl.runtime.bundle.folder import Bundle
    from edgetl.runtime.engines.backends import create_backend
    from edgetl.runtime.machine import cpu_facts

    work = args.work or Path(tempfile.mkdtemp(prefix="edgetl-text-"))
    work.mkdir(parents=True, exist_ok=True)
    train, test = _rows(args.data / "train.csv"), _rows(args.data / "test.csv")
    train_csv, test_csv = _write(work / "train.csv", train), _write(work / "test.csv", test)
    texts = [r["text"] for r in test]
    result: dict = {"data": str(args.data), "train": len(train), "test": len(test), "val_fraction": args.val_fraction,
                    "head": args.head, "device_method": args.method}

    bundle = work / "bundle"
    if args.reuse and (bundle / "manifest.json").is_file():
        print(f"reusing the run and bundle in {work}")
        export = json.loads((bundle / "manifest.json").read_text())
        run = json.loads((work / "run" / "manifest.json").read_text())
        result["finetune"] = {"accuracy": run["val_accuracy"], "timings": run["timings"],
                              "cache_hit": run["cache"]["hit"]}
    else:
        print(f"fine-tuning minilm-l6 on {len(train)} texts")
        run = _finetune(train_csv, work / "run", args.val_fraction, args.head)
        result["finetune"] = {k: run.get(k) for k in ("accuracy", "timings", "cache_hit", "n_train")}
        t0 = time.perf_counter()
        export = _cli("edgetl", "export", str(work / "run"), "--out", str(bundle), "--format", args.formats,
                      "--overwrite")
        result["export_s"] = time.perf_counter() - t0
    manifest = Bundle(bundle).manifest
    flags = cpu_facts()["flags"]
    runnable = [a for a in manifest.artifacts if a.runs_on(flags)]     # bf16 needs a CPU with bf16
    names = [a.name for a in runnable if a.role == "backbone"]
    result["not_run_here"] = {a.name: {"needs": a.requires_cpu, "export_accuracy": a.accuracy, "measured": a.measured}
                              for a in manifest.artifacts if not a.runs_on(flags)}
    result["export"] = {a["name"]: {k: a.get(k) for k in ("accuracy", "accuracy_drop", "max_abs_diff", "size",
                                                          "measured")} for a in export["artifacts"]}

    print("test accuracy per artifact through the runtime")
    accuracy = {}
    for name in names:
        report = _evaluate(bundle, test_csv, name)
        accuracy[name] = {"accuracy": report["accuracy"], "precision": report["precision"],
                          "seconds": round(report["seconds"], 2)}
        print(f"  {name:20s} {report['accuracy']:.4f} ({report['precision']}, {report['seconds']:.1f} s)")
    fp32 = accuracy["onnx"]["accuracy"]
    for row in accuracy.values():
        row["drop_points"] = round((fp32 - row["accuracy"]) * 100, 3)
    result["test_accuracy"] = accuracy

    model, head, preprocess = _encoder(work / "run")
    folder = create_backbone("minilm-l6").pretrained.folder
    print("token parity on every test text")
    result["token_parity"] = _token_parity(bundle, folder, texts)

    print("embeddings and throughput: eager torch against each engine")
    reference, torch_s = _embeddings(model, preprocess, texts)
    throughput = {"torch (eager, fp32)": {"texts_per_s": len(texts) / torch_s}}
    embeddings = {}
    for artifact in runnable:
        if artifact.role != "backbone":
            continue
        with create_backend(artifact.evaluated_with, bundle / artifact.file, precision=artifact.precision) as runner:
            got, seconds = _embeddings(model, preprocess, texts, runner)
        embeddings[artifact.name] = float(np.abs(got - reference).max())
        cosine = np.sum(got * reference, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
        throughput[artifact.name] = {"texts_per_s": len(texts) / seconds, "min_cosine": float(cosine.min())}
    result["embeddings_max_abs_diff_vs_torch"] = embeddings
    fastest = max((n for n in throughput if n in embeddings), key=lambda n: throughput[n]["texts_per_s"])
    result["throughput"] = throughput
    result["fastest_engine"] = {"artifact": fastest,
                                "vs_torch": throughput[fastest]["texts_per_s"] / throughput["torch (eager, fp32)"]
                                ["texts_per_s"]}

    print("other heads on the same cached features (torch embeddings of the test texts)")
    from edgetl.runtime.bundle.heads import load_head

    labels = {name: i for i, name in enumerate(json.loads((work / "run" / "manifest.json").read_text())["class_names"])}
    truth = np.array([labels[r["category"]] for r in test])
    result["other_heads_test_accuracy"] = {}
    for kind in ("linear", "ridge"):
        _finetune(train_csv, work / f"run-{kind}", args.val_fraction, kind)
        logits = load_head(work / f"run-{kind}" / "head.npz").logits(reference)
        result["other_heads_test_accuracy"][kind] = float(np.mean(logits.argmax(axis=1) == truth))
        print(f"  {kind:8s} {result['other_heads_test_accuracy'][kind]:.4f}")

    lengths = [len(t) for t in preprocess.tokens(texts)]
    median = int(np.argsort(lengths)[len(lengths) // 2])
    ids = preprocess.encode([texts[median]])
    print(f"batch-1 latency at the median test-text length ({ids.shape[1]} tokens)")
    full = torch.nn.Sequential(model, head).eval()
    with torch.inference_mode():
        x = torch.from_numpy(ids)
        latency = {"torch (eager, fp32)": _latency(lambda: full(x), args.seconds)}
    for artifact in runnable:
        with create_backend(artifact.evaluated_with, bundle / artifact.file, precision=artifact.precision) as runner:
            bundle_head = Bundle(bundle).exported_head
            run_one = (lambda runner=runner: runner.infer(ids)) if artifact.role != "backbone" else \
                (lambda runner=runner, head=bundle_head: head.logits(runner.infer(ids)))
            latency[artifact.name] = _latency(run_one, args.seconds)
    eager = latency["torch (eager, fp32)"]
    result["latency_p50_ms"] = {"tokens": int(ids.shape[1]), "text": texts[median],
                                **{k: {"p50_ms": round(v, 3), "vs_eager": round(eager / v, 2)}
                                   for k, v in latency.items()}}
    for name, v in latency.items():
        print(f"  {name:20s} {v:7.2f} ms  ({eager / v:.2f}x eager)")

    print("on-device learning: 60 intents on the host, 17 learned with edgetl-rt update")
    intents = sorted({r["category"] for r in train})
    known, new = intents[:60], intents[60:]
    host60 = _write(work / "train60.csv", [r for r in train if r["category"] in known])
    learn17 = _write(work / "learn17.csv", [r for r in train if r["category"] in new])
    _finetune(host60, work / "run60", args.val_fraction, args.head)
    _cli("edgetl", "export", str(work / "run60"), "--out", str(work / "bundle60"), "--format", "onnx", "--overwrite")
    update = _cli("edgetl-rt", "update", str(work / "bundle60"), str(learn17), "--method", args.method)
    learned = _evaluate(work / "bundle60", test_csv, "onnx")["accuracy"]
    result["on_device_learning"] = {"host_intents": 60, "learned_intents": 17, "update": update,
                                    "test_accuracy_after_update": learned,
                                    "host_77_intent_head": fp32, "gap_points": round((fp32 - learned) * 100, 3)}

    gated = [n for n in accuracy if n not in ("onnx", "onnx-fused")]
    worst = max(accuracy[n]["drop_points"] for n in gated) if gated else 0.0
    print()
    print(f"fp32 test accuracy            {fp32:.4f}  {verdict(fp32, 0.93, lower_is_better=False)}")
    print(f"worst gated artifact drop     {worst:.2f} points  {verdict(worst, 1.0)}")
    for name, row in result["token_parity"].items():
        if isinstance(row, dict):
            print(f"tokens vs {name:28s} {row['identical']}/{len(texts)} identical")
    print(f"embeddings onnx vs torch      max |diff| {embeddings.get('onnx', float('nan')):.2e}")
    print(f"fastest engine                {fastest}: {result['fastest_engine']['vs_torch']:.2f}x eager torch "
          f"({throughput[fastest]['texts_per_s']:.0f} texts/s)")
    gap = result["on_device_learning"]["gap_points"]
    print(f"60 + 17 learned on device     {learned:.4f} vs {fp32:.4f} host: {gap:+.2f} points  {verdict(gap, 1.0)}")
    path = save_result("text_transfer", result)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
