"""`l2l report`: every entry's evaluation re-run from its checkpoint, the page built from what they wrote."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_cli

from l2l_cli.cli import report
from l2l_cli.cli.config import config_dir
from l2l_cli.cli.report import check_out
from l2l_cli.core.checks import ConfigError
from l2l_cli.reporting import results_page
from l2l_cli.reporting.results_page import MARKER, read_catalog

TINY = ["optimizee=quadratic", "optimizee.dim=4", "eval.num_functions=8", "eval.val_functions=4",
        "eval.lr_grid=[0.01,0.1,1.0]", "eval.refine_lr=0"]
CATALOG = {"entries": [
    {"name": "single", "title": "One task", "checkpoint": "pretrained:quadratic",
     "overrides": [*TINY, "eval.num_steps=6", "+eval.compare.sub=pretrained:no_such_optimizer",
                   "+eval.compare.again=pretrained:quadratic"]},
    {"name": "study", "title": "A study", "checkpoint": "pretrained:quadratic",
     "overrides": [*TINY, "+eval.variants={short: {num_steps: 4}, long: {num_steps: 8}}"]},
    {"name": "later", "title": "Not yet", "checkpoint": "pretrained:no_such_optimizer", "overrides": []},
]}


def write_catalog(path, catalog) -> str:
    path.write_text(json.dumps(catalog))  # JSON is YAML
    return str(path)


def table_means(text: str, heading: str) -> dict:
    """optimizer -> mean, from the Markdown table under ``heading``."""
    block = text.split(heading, 1)[1]
    rows = re.findall(r"^\| (\w+) \| [^|]+ \| \**([0-9.e+-]+)\** \|", block.split("\n#", 1)[0], flags=re.M)
    return {name: float(mean) for name, mean in rows}


def test_report_reruns_each_entry_and_builds_the_page_from_its_results(tmp_path):
    catalog = write_catalog(tmp_path / "catalog.yaml", CATALOG)
    out, runs = tmp_path / "page", tmp_path / "runs"
    done = run_cli("report", "--catalog", catalog, "--out", str(out), "--runs", str(runs), timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (out / "index.md").read_text()
    assert "- Not yet (`later`): pretrained:no_such_optimizer is not shipped yet" in text
    assert not (runs / "later").exists()
    for heading, folder in (("## One task", runs / "single"), ("### short", runs / "study" / "short"),
                            ("### long", runs / "study" / "long")):
        results = json.loads((folder / "results.json").read_text())
        means = table_means(text, heading)
        assert set(means) == set(results["optimizers"]) and {"lstm", "adam", "nag"} <= set(means)
        for name, mean in means.items():  # the page's figures are the evaluation's, to 4 significant digits
            assert mean == pytest.approx(results["optimizers"][name]["final_mean"], rel=1e-3)
    single = json.loads((runs / "single" / "results.json").read_text())
    best = single["best_baseline"]
    number = r"([0-9.e+-]+)"
    headline = re.search(rf"^\| \[single\]\(#single\) \| lstm \| {number} \(.*\) \| (\w+), lr .* \| {number} \|$",
                         text, flags=re.M)
    assert headline and headline[2] == best and float(headline[1]) == pytest.approx(
        single["optimizers"]["lstm"]["final_mean"], rel=1e-3)
    lstm, baseline = (single["optimizers"][n]["final_mean"] for n in ("lstm", best))
    assert float(headline[3]) == pytest.approx(lstm / baseline, rel=5e-3)  # printed to 3 digits
    assert "| [study](#study) short | lstm |" in text and "| [study](#study) long | lstm |" in text
    for picture in ("single/curves.png", "study/short/curves.png", "study/long/curves.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({picture})" in text
    assert "`l2l eval checkpoint=pretrained:quadratic optimizee=quadratic" in text  # each section's own command
    # a comparison column whose optimizer is not shipped is left out of the run, and the section says so
    assert "Left out, not shipped yet: `+eval.compare.sub=pretrained:no_such_optimizer`." in text
    assert "no_such_optimizer" not in text.split("## One task", 1)[1].split("\n\n", 2)[1]  # not in its command
    # a shipped comparison column runs, and the section says where its optimizer came from
    assert "again" in single["optimizers"] or "again" in single.get("compared", {})
    assert f"- Column `again`: {results_page.provenance('pretrained:quadratic')}." in text

    # a second report replaces the page it wrote; with --only, the other entries keep their sections where
    # their command and shipped optimizers are unchanged (and say so); one that fails leaves the page as it was
    (out / "stale.png").write_bytes(b"old")
    again = run_cli("report", "--catalog", catalog, "--out", str(out), "--only", "single", timeout=120,
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    rebuilt = (out / "index.md").read_text()
    assert not (out / "stale.png").exists() and "## One task" in rebuilt
    built_at = re.search(r"^Built (.+? at commit \S+(?: with changes)?) from ", text, flags=re.M)[1]
    study = text[text.index("## A study"):]
    kept = rebuilt[rebuilt.index("## A study"):]
    assert kept.replace(f"Not re-run in this build: kept from the page built {built_at}.\n\n", "") == study
    assert "| [study](#study) short | lstm |" in rebuilt and (out / "study" / "long" / "curves.png").is_file()
    assert "the 1 marked as kept come from an earlier build's" in rebuilt
    assert "- Not yet (`later`): pretrained:no_such_optimizer is not shipped yet" in rebuilt
    changed = write_catalog(tmp_path / "changed.yaml", {"entries": [
        CATALOG["entries"][0], {**CATALOG["entries"][1], "overrides": [*CATALOG["entries"][1]["overrides"],
                                                                      "eval.num_steps=7"]}, CATALOG["entries"][2]]})
    third = run_cli("report", "--catalog", changed, "--out", str(out), "--only", "single", timeout=120,
                    cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    rebuilt = (out / "index.md").read_text()
    assert "## A study" not in rebuilt and not (out / "study").exists()
    assert ("- A study (`study`): not re-run in this build (--only); its command, or what the page says of an "
            "optimizer it runs, changed since the page was built") in rebuilt
    before = (out / "index.md").read_text()
    bad = write_catalog(tmp_path / "bad.yaml", {"entries": [
        {"name": "broken", "title": "B", "checkpoint": "pretrained:quadratic",
         "overrides": ["optimizee=quadratic", "eval.num_functions=-3"]}]})
    failed = run_cli("report", "--catalog", bad, "--out", str(out), timeout=120, cwd=tmp_path)
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 2 and len(lines) == 1, failed.stderr
    assert lines[0].startswith("l2l: error: report: the evaluation of broken failed (exit code 2); its log: ")
    assert "eval.num_functions" in open(lines[0].split("its log: ")[1].split(";")[0]).read()
    assert (out / "index.md").read_text() == before and (out / MARKER).is_file()


def test_a_stopped_report_leaves_no_half_built_page(tmp_path):
    """SIGTERM while an evaluation runs: that evaluation is killed, the half-built page removed, the exit code
    says which signal."""
    catalog = write_catalog(tmp_path / "catalog.yaml", {"entries": CATALOG["entries"][:1]})
    runs = tmp_path / "runs"
    report = subprocess.Popen([sys.executable, "-m", "l2l_cli", "report", "--catalog", catalog, "--out",
                               str(tmp_path / "page"), "--runs", str(runs)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (runs / "single.log").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    report.send_signal(signal.SIGTERM)
    _, err = report.communicate(timeout=60)
    assert report.returncode == 143 and "report stopped by signal 15; the page is unchanged" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.yaml", "runs"]  # no page, no .page.new-* folder
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(runs).encode() in _read(p)]  # eval killed


def test_a_stop_while_the_evaluation_starts_still_kills_it(tmp_path, monkeypatch):
    """The race the test above can hit: SIGTERM while Popen is starting the evaluation. It must wait until Popen
    has returned the process, then kill it; raised inside Popen, it left the evaluation running unowned."""
    started = []

    def popen_then_signal(command, **kwargs):
        proc = real_popen([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs)
        started.append(proc)
        os.kill(os.getpid(), signal.SIGTERM)  # handled before this function returns
        return proc

    real_popen = subprocess.Popen
    monkeypatch.setattr(report.subprocess, "Popen", popen_then_signal)
    previous = signal.signal(signal.SIGTERM, report._STOP)
    try:
        entry = SimpleNamespace(checkpoint="pretrained:quadratic", overrides=[])
        with pytest.raises(SystemExit) as stopped:
            report.run_entry(entry, tmp_path / "single")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 143 and started and started[0].returncode == -signal.SIGKILL


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process has just ended
        return b""


def test_a_folder_the_report_did_not_write_is_never_replaced(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match=r"--out .*notes: exists and is not a page l2l report wrote"):
        check_out(mine)
    done = run_cli("report", "--out", str(mine), "--only", "quadratic", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not a page l2l report wrote" in done.stderr
    assert (mine / "thesis.tex").read_text() == "precious" and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("catalog, message", [
    ({"entries": []}, "expected a mapping with a non-empty list 'entries'"),
    ({"entries": [{"name": "a b", "title": "t", "checkpoint": "c"}]}, r"entries\[0\].name must be a plain identifier"),
    ({"entries": [{"name": "a", "title": "t", "checkpoint": "c", "overrides": ["hydra.run.dir=/"]}]},
     "may not set hydra"),
    ({"entries": [{"name": "a", "title": "t", "checkpoint": "c"}, {"name": "a", "title": "u", "checkpoint": "d"}]},
     "entry names must be unique"),
])
def test_a_bad_catalog_is_one_line_naming_it(tmp_path, catalog, message):
    path = write_catalog(tmp_path / "c.yaml", catalog)
    with pytest.raises(ConfigError, match=message) as err:
        read_catalog(path)
    assert "\n" not in str(err.value) and "c.yaml" in str(err.value)


def test_the_shipped_catalog_names_every_experiment():
    from l2l_cli.cli.config import config_dir

    names = [e.name for e in read_catalog(f"{config_dir()}/report.yaml")]
    assert names == ["quadratic", "mnist", "mnist_generalization", "convnet", "neural_art"]


def test_provenance_names_the_commit_training_started_at_and_each_resume(monkeypatch):
    info = {"architecture": "lstm", "command": "l2l train x=1", "commit": "0123456789abcdef", "commit_dirty": False,
            "resumed_at": [{"commit": "fedcba9876543210", "commit_dirty": True}], "seeds": {"seed": 0},
            "trained": {"iterations": 40, "checkpoint_iteration": 30, "best_val": 0.25}}
    monkeypatch.setattr(results_page.pretrained, "record", lambda name: info)
    assert results_page.provenance("pretrained:x") == (
        "`pretrained:x`: lstm, `l2l train x=1` at commit 0123456789, resumed at fedcba9876 with changes, seed 0; "
        "meta-trained 40 iterations, checkpoint of iteration 30 (best validation 0.25)")
    info["started_from"] = {"checkpoint": "runs/a/checkpoints/best.pt", "command": "l2l train y=2",
                            "commit": "abcdef0123456789", "commit_dirty": False}
    assert ", resumed at fedcba9876 with changes, starting from `runs/a/checkpoints/best.pt` (`l2l train y=2` at " \
           "commit abcdef0123), seed 0;" in results_page.provenance("pretrained:x")


def test_the_results_page_shows_the_optimizers_shipped_now():
    """docs/results/index.md names, in each section, the shipped optimizer it evaluated: re-shipping one without
    `l2l report --only <its entries> --out docs/results` fails here."""
    page = Path(__file__).resolve().parents[1] / "docs" / "results" / "index.md"
    _, sections = results_page.earlier_sections(page.read_text())
    for entry in read_catalog(Path(config_dir()) / "report.yaml"):
        if results_page.checkpoint_missing(entry) is None:
            shown = f"Checkpoint {results_page.provenance(entry.checkpoint)}. "
            assert any(line.startswith(shown) for line in sections[entry.name][0]), (entry.name, shown)
