"""Every reader of a user file is bounded and total: fed a valid file mutated at random (truncated, bits flipped,
bytes inserted or deleted, JSON values replaced by other types), it gives a valid result or one line naming the file,
never another exception. Property tests (hypothesis) per reader, then the regressions they stand for.

L2L_FUZZ_EXAMPLES=2000 runs a longer profile (default: 150 examples per reader, a few seconds each)."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import math
import os
import re
import tempfile
import threading
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import cli_one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict

from l2l_cli import LearnedOptimizer, pretrained
from l2l_cli.api import pretrained as shipping
from l2l_cli.cli.config import continue_recorded, to_objects
from l2l_cli.cli.evaluate import load_learned
from l2l_cli.core.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.core.schemas import ConfigError
from l2l_cli.evaluation.comparison import TuningResult
from l2l_cli.evaluation.tuning_cache import TuningCache
from l2l_cli.meta.population import find_resume
from l2l_cli.optimizers.baselines import baseline_config
from l2l_cli.optimizers.learned import build_learned
from l2l_cli.optimizers.learned.loading import load_learned_optimizer, rebuild_learned
from l2l_cli.reporting.run_records import metrics_of, read_run

EXAMPLES = int(os.environ.get("L2L_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def one_line(exc: BaseException, path) -> None:
    """The contract's failure: one line that names the file."""
    text = str(exc)
    assert "\n" not in text and str(path) in text, text


# --- mutations ------------------------------------------------------------------------------------------------------

@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """``valid`` after 1-4 of: a bit flip, a truncation, an inserted / deleted / overwritten run of bytes."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "delete", "overwrite"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif data:
            patch = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(patch)] = patch
    return bytes(data)


def file_bytes(valid: bytes):
    """Mutations of ``valid`` and arbitrary bytes."""
    return st.one_of(mutated(valid), st.binary(max_size=256))


JSON_ODDITIES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                          st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                          st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                              max_size=2),
                          st.just([[[]]]), st.just({"": {"": None}}), st.just("\n"))


def _paths(value, prefix=()):
    """Every key path into a nest of dicts and lists."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for k, v in enumerate(value):
            yield from _paths(v, (*prefix, k))


@st.composite
def retyped(draw, valid):
    """``valid`` (JSON data) with 1-3 values, possibly the whole document, replaced by values of other types, or a
    key removed."""
    data = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(data))
        path = draw(st.sampled_from(paths))
        if not path:
            return copy.deepcopy(draw(JSON_ODDITIES))
        parent = data
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(draw(JSON_ODDITIES))  # st.just's object is shared between examples
    return data


def json_file(valid: dict):
    """The bytes of a JSON file: ``valid`` retyped, or its text mutated, or arbitrary bytes."""
    text = json.dumps(valid, indent=2).encode()
    return st.one_of(retyped(valid).map(lambda v: json.dumps(v, allow_nan=True).encode()), file_bytes(text))


# --- checkpoints ----------------------------------------------------------------------------------------------------

def tiny_lstm():
    torch.manual_seed(0)
    net = build_learned(OPTIMIZERS.get("lstm").example_config())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return net


def training_payload(net) -> dict:
    """What a trainer writes to last.pt (meta/trainer_checkpoints.py), for a tiny LSTM."""
    meta_opt = torch.optim.Adam(net.parameters(), lr=1e-3)  # its state is empty, as at iteration 0
    return {"optimizer": dataclasses.asdict(net.config), "optimizee": {"name": "quadratic", "dim": 4, "batch_size": 8},
            "schedule": {"name": "truncated", "num_steps": 4, "unroll": 2}, "estimator": {"name": "tbptt"},
            "model": net.state_dict(), "meta_optimizer": meta_opt.state_dict(), "rng": torch.Generator().get_state(),
            "iteration": 3, "best_val": math.inf, "best_iteration": -1, "skipped_total": 0, "history": [[0, 1.5]],
            "seed": 0, "member": 0, "data_seed": 0, "curriculum": {}}


@lru_cache(maxsize=None)
def valid_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": "l2l-checkpoint", "format_version": 1, **training_payload(tiny_lstm())}, buffer)
    return buffer.getvalue()


def rezipped(valid: bytes, pickle: bytes) -> bytes:
    """``valid`` with its data.pkl replaced: a sound zip around a broken pickle, for torch's unpickler."""
    source, out = zipfile.ZipFile(io.BytesIO(valid)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for name in source.namelist():
            target.writestr(name, pickle if name.endswith("data.pkl") else source.read(name))
    return out.getvalue()


@lru_cache(maxsize=None)
def valid_pickle() -> bytes:
    source = zipfile.ZipFile(io.BytesIO(valid_checkpoint()))
    return source.read(next(n for n in source.namelist() if n.endswith("data.pkl")))


PAYLOAD_ODDITIES = st.one_of(JSON_ODDITIES, st.just(torch.tensor([math.nan])), st.just(torch.zeros(2, 2)),
                             st.just({"x": torch.tensor([math.inf])}), st.just({"x": "w"}), st.just({1: 2}),
                             st.just(torch.zeros(3, dtype=torch.int64)), st.just((1, 2)))


@st.composite
def payload_variants(draw):
    """A training payload with 1-3 fields (or a weight tensor) replaced by other types or non-finite values."""
    payload = training_payload(tiny_lstm())
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(payload)))
        weights = payload.get("model")
        tensors = isinstance(weights, dict) and weights and all(isinstance(t, torch.Tensor) for t in weights.values())
        if key == "model" and tensors and draw(st.booleans()):
            name = draw(st.sampled_from(sorted(payload["model"])))
            payload["model"][name] = payload["model"][name].clone().fill_(
                draw(st.sampled_from([math.nan, math.inf, -math.inf, 0.5])))
        elif isinstance(payload[key], dict) and payload[key] and draw(st.booleans()):
            inner = draw(st.sampled_from(sorted(payload[key], key=str)))
            payload[key][inner] = copy.deepcopy(draw(PAYLOAD_ODDITIES))  # st.just's object is shared
        else:
            payload[key] = copy.deepcopy(draw(PAYLOAD_ODDITIES))
    buffer = io.BytesIO()
    torch.save({"format": "l2l-checkpoint", "format_version": 1, **payload}, buffer)
    return buffer.getvalue()


def check_checkpoint_reader(data: bytes) -> None:
    """load_checkpoint, then rebuilding its learned optimizer: a valid result with finite weights, or one line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pt"
        path.write_bytes(data)
        try:
            payload = load_checkpoint(path)
            net = rebuild_learned(payload, path)
        except CheckpointError as exc:
            one_line(exc, path)
            return
        assert all(torch.isfinite(t).all() for t in payload["model"].values())
        assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, on a mutated pickle header
@FUZZ
@given(st.deferred(lambda: st.one_of(
    file_bytes(valid_checkpoint()), st.binary(max_size=64).map(lambda b: rezipped(valid_checkpoint(), b)),
    mutated(valid_pickle()).map(lambda b: rezipped(valid_checkpoint(), b)))))
def test_checkpoint_bytes_load_or_fail_in_one_line(data):
    check_checkpoint_reader(data)


@FUZZ
@given(payload_variants())
def test_checkpoint_fields_of_the_wrong_type_fail_in_one_line(data):
    check_checkpoint_reader(data)


# --- run records: metrics.json, results.json, error.json, overrides.yaml ---------------------------------------------

CURVE = [3.0, 2.0, 1.0]
FIGURES = {"final_mean": 1.0, "final_median": 0.9, "final_mean_log10": -0.1, "mean": CURVE}
RESULTS = {"optimizee": {"name": "quadratic", "dim": 4}, "num_steps": 3, "num_test_functions": 8,
           "seeds": {"seed": 0, "data_seed": 0}, "studied": "lstm",
           "learned": {"checkpoint": "best.pt", "iteration": 4, "best_val": 0.5, "improved": True},
           "best_baseline": "adam", "learning_rates": {"adam": {"lr": 0.1, "tuned": True, "validation_scores": {}}},
           "optimizers": {"lstm": dict(FIGURES), "adam": {**FIGURES, "final_mean": 2.0}}}
METRICS = {"val_best": 0.5, "improved": True, "iterations": 6, "test_final_mean": 1.0, "train_seconds": 1.0,
           "total_seconds": 2.0}
ERROR = {"error": "optimizee.dim: must be >= 1", "type": "ConfigError", "overrides": [], "traceback": ""}
OVERRIDES = b"- optimizer=lstm\n- train.meta_lr=1e-3\n- eval.lr_grid=[0.1,1.0]\n"


def check_run_record(files: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        (run / ".hydra").mkdir()
        (run / "eval").mkdir()
        for name, data in files.items():
            (run / name).write_bytes(data)
        record = read_run(run, "run")
        if record is None:
            return
        metrics_of(record)  # what `l2l plot` and the summaries compute
        assert isinstance(record.sort_key, tuple) and isinstance(record.overrides, dict)
        if record.results:  # what `l2l plot` draws
            assert all(isinstance(v, (int, float)) for v in record.results["optimizers"][record.learned]["mean"])


@FUZZ
@given(st.sampled_from(["results.json", "eval/results.json"]), json_file(RESULTS))
def test_results_json_reads_or_is_left_out(name, data):
    train = {"metrics.json": json.dumps(METRICS).encode()} if name.startswith("eval") else {}
    check_run_record({name: data, **train})


@FUZZ
@given(json_file(METRICS), json_file(ERROR), file_bytes(OVERRIDES))
def test_metrics_error_and_overrides_read_or_are_left_out(metrics, error, overrides):
    check_run_record({"metrics.json": metrics, "error.json": error, ".hydra/overrides.yaml": overrides})


# --- the tuning cache ---------------------------------------------------------------------------------------------

TASK = {"optimizee": {"name": "quadratic"}, "num_steps": 3}


def tuning_cache(directory) -> TuningCache:
    return TuningCache(directory, TASK, {"adam": baseline_config("adam")})


def valid_entry() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cache = tuning_cache(tmp)
        cache.put("adam", TuningResult("adam", 0.1, {0.01: 2.0, 0.1: 1.0, 1.0: math.inf}, grid=[0.01, 0.1, 1.0],
                                       search="staged", screen={0.01: 2.5, 1.0: math.inf},
                                       stopped={1.0: "diverged at step 3"}))
        return json.loads(cache._path("adam").read_text())


@FUZZ
@given(st.deferred(lambda: json_file(valid_entry())))
def test_a_tuning_cache_entry_is_a_tuning_or_a_miss(data):
    with tempfile.TemporaryDirectory() as tmp:
        cache = tuning_cache(tmp)
        cache._path("adam").parent.mkdir(parents=True, exist_ok=True)
        cache._path("adam").write_bytes(data)
        result = cache.get("adam")
        if result is not None:
            assert result.lr > 0 and math.isfinite(result.lr) and isinstance(result.at_grid_edge, bool)
            assert all(isinstance(k, float) and isinstance(v, float) for k, v in result.scores.items())


# --- run.json: resume=true's search, and the config a resumed run continues with -----------------------------------

def task_cfg(compose_cfg):
    """The config a command's task gets (no hydra section)."""
    cfg = copy.deepcopy(compose_cfg("train", ["debug=tiny"]))
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def test_run_json_is_resumed_or_left_for_the_command_line(compose_cfg):
    cfg = task_cfg(compose_cfg)
    valid = {"config": OmegaConf.to_container(cfg, resolve=True), "seeds": {"seed": 0, "data_seed": 0},
             "environment": {"git_commit": None}}

    @FUZZ
    @given(json_file(valid))
    def check(data):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "run.json").write_bytes(data)
            try:
                merged = continue_recorded(cfg, Path(tmp), ["resume=true", "train.iterations=7",
                                                            "optimizer.hidden_size=20"])
            except ConfigError as exc:
                assert "\n" not in str(exc) and tmp in str(exc)
                return
            assert merged is cfg or merged.optimizer.name == cfg.optimizer.name

    logging.getLogger("l2l.train").disabled = True  # a warning per broken example
    try:
        check()
    finally:
        logging.getLogger("l2l.train").disabled = False


def test_resume_true_skips_run_dirs_whose_run_json_is_broken():
    valid = {"config": {"optimizee": {"name": "quadratic"}, "train": {}}}

    @FUZZ
    @given(json_file(valid))
    def check(data):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "train"
            save_checkpoint({"iteration": 1}, root / "old" / "checkpoints" / "last.pt")
            (root / "old" / "run.json").write_bytes(data)
            try:
                found = find_resume(True, root / "new", False, "train", "quadratic")
            except ConfigError as exc:
                assert "\n" not in str(exc)
                return
            assert found == root / "old"

    check()


# --- pretrained records and packaging a run -----------------------------------------------------------------------

def test_a_pretrained_record_reads_or_fails_in_one_line():
    valid = json.loads((pretrained.HERE / "quadratic.json").read_text())

    @FUZZ
    @given(json_file(valid))
    def check(data):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "x.json").write_bytes(data)
            try:
                info = pretrained.record("x", Path(tmp))
            except CheckpointError as exc:
                one_line(exc, Path(tmp) / "x.json")
                return
            evaluation = info["evaluation"]
            assert isinstance(evaluation["optimizers"][info["architecture"]]["final_mean"], (int, float))
            assert evaluation["best_baseline"] in evaluation["optimizers"]

    check()


def test_packaging_reads_a_run_or_fails_in_one_line():
    net = tiny_lstm()
    run_record = {"config": {"optimizee": {"name": "quadratic"}}, "seeds": {"seed": 0},
                  "environment": {"git_commit": "abc", "git_dirty": False}}

    @FUZZ
    @given(st.sampled_from(["eval/results.json", "run.json", "metrics.json"]), st.data())
    def check(broken, data):
        valid = {"eval/results.json": RESULTS, "run.json": run_record, "metrics.json": METRICS}
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            save_checkpoint(training_payload(net), run / "checkpoints" / "best.pt")
            for name, content in valid.items():
                (run / name).parent.mkdir(parents=True, exist_ok=True)
                (run / name).write_bytes(data.draw(json_file(content)) if name == broken else
                                         json.dumps(content).encode())
            with mock.patch.object(shipping, "check_figures", lambda *args: {}):
                try:
                    info = shipping.package("tiny", run, directory=Path(tmp))
                except CheckpointError as exc:
                    assert "\n" not in str(exc) and str(run) in str(exc)
                    return
            assert info["evaluation"]["best_baseline"] in info["evaluation"]["optimizers"]

    check()


# --- regressions --------------------------------------------------------------------------------------------------

def checkpoint_of(net, path, **changes) -> Path:
    return save_checkpoint({"optimizer": dataclasses.asdict(net.config), "model": net.state_dict(), "iteration": 0,
                            "best_val": math.inf, "history": [[0, 1.0]], **changes}, path)


def cli_error(argv, tmp_path, capsys, monkeypatch) -> str:
    """`l2l <argv>` in this process: it exits 2 with one line on stderr, which is returned."""
    monkeypatch.chdir(tmp_path)
    return cli_one_line_error([*argv, f"hydra.run.dir={tmp_path / 'run'}"], capsys, monkeypatch)


def test_three_bytes_that_crashed_torch_load_are_one_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "b.pt"
    path.write_bytes(b"h\x05.")  # torch.load raised KeyError: 5 (and other short strings IndexError, ...)
    with pytest.raises(CheckpointError, match="unreadable") as info:
        load_checkpoint(path)
    one_line(info.value, path)
    with pytest.raises(CheckpointError, match="unreadable"):
        LearnedOptimizer([torch.nn.Parameter(torch.zeros(2))], checkpoint=path)
    line = cli_error(["eval", f"checkpoint={path}"], tmp_path, capsys, monkeypatch)
    assert str(path) in line and "unreadable" in line


@pytest.mark.parametrize("field, value, message", [
    ("optimizee", "quadratic", "its 'optimizee' is not a config"),
    ("optimizer", ["lstm"], "its 'optimizer' is not a config"),
    ("model", {"w": "weights"}, "model['w'] is str, not a dense float tensor"),
    ("iteration", "3", "its 'iteration' is not an integer >= 0"),
    ("iteration", True, "its 'iteration' is not an integer >= 0"),
    ("history", [[0]], "its 'history' is not a list of"),
    ("rng", torch.zeros(3), "its 'rng' is not a generator state"),
])
def test_a_field_of_the_wrong_type_is_one_line(tmp_path, field, value, message):
    path = checkpoint_of(tiny_lstm(), tmp_path / "c.pt", **{field: value})
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        load_learned_optimizer(path)
    one_line(info.value, path)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", ["model", "trained_model"])
def test_non_finite_weights_are_refused(tmp_path, bad, field):
    net = tiny_lstm()
    weights = net.state_dict()
    name = sorted(weights)[1]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[3] = bad
    path = checkpoint_of(net, tmp_path / "c.pt", **{field: weights})
    with pytest.raises(CheckpointError, match=rf"{field}\['{name}'\] holds 1 non-finite value") as info:
        load_checkpoint(path)
    one_line(info.value, path)
    param = torch.nn.Parameter(torch.ones(4))
    with pytest.raises(CheckpointError, match="non-finite"):
        LearnedOptimizer([param], checkpoint=path)
    assert torch.equal(param, torch.ones(4))


def test_inf_outside_the_weights_is_fine(tmp_path):
    path = checkpoint_of(tiny_lstm(), tmp_path / "c.pt", best_val=math.inf, history=[[0, math.nan]])
    assert load_checkpoint(path)["best_val"] == math.inf
    LearnedOptimizer([torch.nn.Parameter(torch.ones(4))], checkpoint=path)


def test_shipped_checkpoints_load():
    for name in pretrained.names():
        net, payload = load_learned_optimizer(f"pretrained:{name}")
        assert all(torch.isfinite(p).all() for p in net.parameters()) and payload["iteration"] >= 0


def _refused_without_hanging(path) -> str:
    outcome = []

    def read():
        try:
            load_checkpoint(path)
        except CheckpointError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), f"reading {path} hung"
    return outcome[0]


def test_a_device_a_fifo_and_a_directory_are_refused_without_hanging(tmp_path):
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    for path, message in (("/dev/zero", "not a regular file"), (fifo, "not a regular file"),
                          (tmp_path, "is a directory")):
        line = _refused_without_hanging(path)
        assert message in line and str(path) in line and "\n" not in line


def test_a_tuning_cache_entry_that_is_not_an_object_is_a_miss(tmp_path, caplog):
    cache = tuning_cache(tmp_path)
    for content in ("[1, 2]", '{"key": "x"}', "7", '"adam"'):
        cache._path("adam").write_text(content)
        with caplog.at_level("WARNING", logger="l2l.eval"):
            assert cache.get("adam") is None
        assert str(cache._path("adam")) in caplog.text
    entry = valid_entry()
    for field, value in (("lr", "0.1"), ("scores", [1]), ("grid", None), ("lr", -1), ("scores", {"x": 1.0}),
                         ("search", "random"), ("screen", {"0.1": "x"}), ("stopped", {"0.1": 3}), ("stopped", [])):
        cache._path("adam").write_text(json.dumps({**entry, field: value}))
        assert cache.get("adam") is None
    cache._path("adam").write_text(json.dumps(entry))
    found = cache.get("adam")
    assert found.lr == 0.1 and found.stopped == {1.0: "diverged at step 3"} and found.screen[1.0] == math.inf


def test_an_explicit_optimizer_other_than_the_checkpoints_is_one_line(tmp_path, capsys, monkeypatch, compose_cfg):
    path = checkpoint_of(tiny_lstm(), tmp_path / "lstm.pt")
    line = cli_error(["eval", f"checkpoint={path}", "optimizer=rnnprop"], tmp_path, capsys, monkeypatch)
    assert line.endswith(f"checkpoint {path}: holds a lstm optimizer, config asks for optimizer=rnnprop (drop "
                         "optimizer= to use the checkpoint's)")
    # without optimizer= (lstm by default) the checkpoint's optimizer is used, whatever it is
    conf = to_objects(compose_cfg("eval", ["optimizer=rnnprop", f"checkpoint={path}"]))
    name, net, _ = load_learned(conf, "cpu", explicit_keys=set())
    assert name == "lstm"
    assert load_learned(conf, "cpu", explicit_keys={"hidden_size"})[0] == "lstm"
    for pretrained_name in pretrained.names():
        default = to_objects(compose_cfg("eval", [f"checkpoint=pretrained:{pretrained_name}"]))
        shipped = pretrained.record(pretrained_name)["architecture"]  # lstm, or adam_mlp for general
        assert load_learned(default, "cpu", explicit_keys=set())[0] == shipped


# --- complex parameters in LearnedOptimizer -------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in OPTIMIZERS.learned()
                                  if getattr(OPTIMIZERS.get(n).build, "coordinatewise", False)])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_a_complex_parameter_moves_in_both_parts_as_its_real_view_would(tmp_path, name, dtype):
    torch.manual_seed(0)
    net = build_learned(OPTIMIZERS.get(name).example_config())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    path = checkpoint_of(net, tmp_path / "c.pt")
    z = torch.nn.Parameter(torch.randn(3, 2, dtype=dtype))
    r = torch.nn.Parameter(torch.view_as_real(z.detach()).clone())  # the same coordinates, as a real tensor
    start = z.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "discards the imaginary part" was the only sign before
        complex_opt, real_opt = LearnedOptimizer([z], checkpoint=path), LearnedOptimizer([r], checkpoint=path)
        for _ in range(4):
            grad = torch.randn(3, 2, dtype=dtype)
            z.grad, r.grad = grad.clone(), torch.view_as_real(grad).clone()
            complex_opt.step()
            real_opt.step()
    moved = z.detach() - start
    assert (moved.real != 0).all() and (moved.imag != 0).all()
    assert torch.equal(torch.view_as_real(z.detach()), r.detach())
    again = LearnedOptimizer([z], checkpoint=path)
    again.load_state_dict(complex_opt.state_dict())  # the state of 2 x 6 coordinates fits the complex parameter
    assert all(torch.equal(a, b) for a, b in zip(again.state[z]["learned_state"],
                                                  real_opt.state_dict()["state"][0]["learned_state"], strict=True))


# --- a baseline's cached test curve ----------------------------------------------------------------------------------

def _curve_entry(cache) -> dict:
    from l2l_cli.evaluation.comparison import CurveStats

    stats = CurveStats(mean=[2.0, 1.0], median=[2.0, 0.5], q10=[1.5, 0.1], q90=[3.0, math.nan], nonfinite=1, runs=4,
                       final_expected_mean=0.9, mean_log10=[0.3, -0.5])
    cache.put_test("adam", 0.1, 4, stats)
    return json.loads(cache._test_path("adam", 0.1, 4)[0].read_text())


def test_a_cached_test_curve_is_a_curve_or_a_miss(tmp_path, caplog):
    cache = tuning_cache(tmp_path)
    entry = _curve_entry(cache)
    found = cache.get_test("adam", 0.1, 4)
    assert found.final_mean == 1.0 and math.isnan(found.q90[1]) and found.nonfinite == 1 and found.runs == 4
    assert cache.get_test("adam", 0.1, 5) is None and cache.get_test("adam", 0.2, 4) is None  # other functions, lr
    path = cache._test_path("adam", 0.1, 4)[0]
    stats = entry["stats"]
    for bad in ({**entry, "key": "x"}, {**entry, "stats": [1]}, {**entry, "stats": {**stats, "mean": [1.0]}},
                {**entry, "stats": {**stats, "median": ["x", 1]}}, {**entry, "stats": {**stats, "runs": 5}},
                {**entry, "stats": {**stats, "nonfinite": 7}}, {**entry, "stats": {**stats, "runs": True}},
                {**entry, "stats": {**stats, "mean": []}}, {**entry, "stats": {**stats, "median": [], "mean": [],
                                                                                "q10": [], "q90": [],
                                                                                "mean_log10": []}}):
        path.write_text(json.dumps(bad))
        with caplog.at_level("WARNING", logger="l2l.eval"):
            assert cache.get_test("adam", 0.1, 4) is None
        assert str(path) in caplog.text
    for content in ("[", "7", "\x00" * 10):
        path.write_text(content)
        assert cache.get_test("adam", 0.1, 4) is None


def test_an_evaluation_tests_each_baseline_once_per_task(tmp_path, monkeypatch):
    """A second optimizer evaluated on the same task reuses the baselines' test curves (the same problems, so the
    same numbers) and runs only itself; another number of test functions is another entry."""
    from l2l_cli.evaluation import comparison
    from l2l_cli.optimizees import build_family
    from l2l_cli.optimizees.base import held_out_problems
    from l2l_cli.optimizees.quadratic import QuadraticConfig

    family = build_family(QuadraticConfig(dim=4))
    val = held_out_problems(family, 2, 6, 0, "validation")
    test = held_out_problems(family, 3, 6, 0, "test")
    baselines = {name: baseline_config(name) for name in ("adam", "sgd")}
    cache = TuningCache(tmp_path, TASK, baselines)
    first = comparison.evaluate_task(family, val, test, 6, baselines, [0.01, 0.1], 0, tuning_cache=cache)
    runs = []
    real_run = comparison.run
    monkeypatch.setattr(comparison, "run", lambda *a, **k: runs.append(a[2]) or real_run(*a, **k))
    rule = build_learned(OPTIMIZERS.get("lstm").default_config()).eval()
    second = comparison.evaluate_task(family, val, test, 6, baselines, [0.01, 0.1], 0, learned=("lstm", rule),
                                      tuning_cache=cache)
    assert runs == [rule]
    for name in baselines:
        assert second.stats[name] == first.stats[name]
    more = held_out_problems(family, 4, 6, 0, "test")
    comparison.evaluate_task(family, val, more, 6, baselines, [0.01, 0.1], 0, tuning_cache=cache)
    assert len(runs) == 1 + len(baselines)
