"""Replays the hostile inputs of issue 28 against the installed `l2l` and prints one line per situation: what was
done, the exit code, the first line l2l printed to stderr, and whether anything already written changed.

    .venv/bin/python tools/hostile_inputs.py            # a markdown table on stdout (a few minutes on 2 cores)

Each situation runs in a fresh temporary directory; nothing outside it is written except that `pretrained add`
is pointed at names that must be refused (the package dir is compared before and after).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=tiny", "optimizee.batch_size=8", "optimizee.dim=4", "train.evaluate=false", "threads=1"]
TINY_EVAL = ["optimizee.dim=4", "eval.num_steps=10", "eval.num_functions=8", "eval.val_functions=4",
             "eval.lr_grid=[0.01,0.1,1.0]", "threads=1"]
TINY_MNIST = ["optimizee=mnist", "debug=tiny", "optimizee.batch_size=2", "train.iterations=2", "train.val_every=1",
              "train.val_functions=2", "train.evaluate=false", "threads=1", "optimizee.data.validation=4",
              "optimizee.data.test=4"]
ROWS: list[tuple[str, str, str, str]] = []


def l2l(*args, cwd: Path, stdin=None, stdout=subprocess.PIPE, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "l2l_cli", *args], cwd=cwd, env=env, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=timeout, stdin=stdin)


def python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in files:
        if p.suffix != ".log" and ".hydra" not in p.parts:
            h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode() + p.read_bytes())
    return h.hexdigest()[:12]


def first_error(result: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    if not lines and result.returncode == 0 and result.stdout:  # a run that went on: its logged warning
        warning = next((line for line in result.stdout.splitlines() if "WARNING" in line), None)
        lines = [f"(stdout) {warning.split('WARNING', 1)[1].strip()}"] if warning else []
    tracebacks = sum("Traceback" in line for line in lines)
    shown = next((line for line in lines if line.startswith("l2l")), lines[-1] if lines else "(nothing)")
    extra = f" [+{len(lines) - 1} more stderr lines{', TRACEBACK' if tracebacks else ''}]" if len(lines) > 1 else ""
    return (shown[:230] + ("..." if len(shown) > 230 else "")).replace("|", "\\|") + extra


def record(situation: str, result: subprocess.CompletedProcess, kept: str = "") -> None:
    ROWS.append((situation, str(result.returncode), first_error(result), kept))
    print(f"- {situation}: rc {result.returncode}: {first_error(result)} {kept}", file=sys.stderr, flush=True)


def idx(path: Path, magic: int, dims: tuple, payload: bytes, compress: bool = False) -> Path:
    data = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def mnist_dir(root: Path, images: int = 40, label: int | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    idx(root / "train-images-idx3-ubyte", 0x803, (images, 28, 28), rng.integers(0, 256, images * 784,
                                                                                  dtype=np.uint8).tobytes())
    labels = rng.integers(0, 10, images, dtype=np.uint8)
    if label is not None:
        labels[:] = label
    idx(root / "train-labels-idx1-ubyte", 0x801, (images,), labels.tobytes())
    return root


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="l2l-hostile-"))
    train = l2l("train", *TINY, f"hydra.run.dir={work / 'run'}", cwd=work)
    assert train.returncode == 0, train.stderr[-2000:]
    run, best = work / "run", work / "run" / "checkpoints" / "best.pt"
    package = ROOT / "l2l_cli" / "pretrained"

    # data lost
    before = digest(package)
    for name in ("../../x", "quadratic", "mnist", "bad name"):
        result = l2l("pretrained", "add", "--", name, str(run), cwd=work)
        record(f"`l2l pretrained add -- {name} RUN`", result,
               "package unchanged" if digest(package) == before and not (ROOT / "x.pt").exists() else "CHANGED")
    before = digest(run)
    record("`l2l train ... hydra.run.dir=<finished run>` (no resume)",
           l2l("train", *TINY, f"hydra.run.dir={run}", cwd=work),
           "run unchanged" if digest(run) == before else "CHANGED")
    record("`l2l eval ... hydra.run.dir=<train run>`",
           l2l("eval", *TINY_EVAL, f"checkpoint={best}", f"hydra.run.dir={run}", cwd=work),
           "run unchanged" if digest(run) == before else "CHANGED")
    resumed = l2l("train", *TINY, "train.iterations=7", "resume=true", f"hydra.run.dir={run}", cwd=work)
    record("then `resume=true hydra.run.dir=<it>` train.iterations=7", resumed,
           "resumed to 7" if json.loads((run / "metrics.json").read_text())["iterations"] == 7 else "NOT RESUMED")

    # tracebacks
    bad = work / "b.pt"
    for name, data in (("printf 'h\\x05.'", b"h\x05."), ("b'\\x80\\x02K'", b"\x80\x02K"),
                       ("b'X\\xff\\xff\\xff\\x7f'", b"X\xff\xff\xff\x7f"), ("b'\\x80\\x04\\x95'", b"\x80\x04\x95"),
                       ("b'PK\\x03\\x04'", b"PK\x03\x04")):
        bad.write_bytes(data)
        record(f"`{name} > b.pt`, `l2l eval checkpoint=b.pt`", l2l("eval", *TINY_EVAL, f"checkpoint={bad}",
                                                                   cwd=work))
    bad.write_bytes(b"h\x05.")
    code = ("import torch; from l2l_cli import LearnedOptimizer as L\n"
            "p = torch.nn.Parameter(torch.zeros(3))\ntry:\n    L([p], checkpoint='b.pt')\n"
            "except Exception as e:\n    import sys; print(f'{type(e).__name__}: {e}', file=sys.stderr); sys.exit(2)")
    record("the same b.pt through `LearnedOptimizer([p], checkpoint='b.pt')`", python(code, work))
    shutil.copytree(run, work / "run_b")
    (work / "run_b" / "checkpoints" / "last.pt").write_bytes(b"h\x05.")
    record("the same bytes as last.pt, then `resume=true`",
           l2l("train", *TINY, "resume=true", f"hydra.run.dir={work / 'run_b'}", cwd=work))
    payload = torch.load(best, weights_only=True)
    torch.save({**payload, "optimizee": "quadratic"}, work / "s.pt")
    record("a checkpoint whose `optimizee` field is a string", l2l("eval", *TINY_EVAL, f"checkpoint={work / 's.pt'}",
                                                                  cwd=work))
    # 2^31 x 2^31 x 4 = 2^64 bytes, which int64 arithmetic wraps to 0: an empty payload matched it
    overflow = idx(mnist_dir(work / "overflow") / "train-images-idx3-ubyte", 0x803, (2**31, 2**31, 4), b"")
    record("IDX images header 2^31 x 2^31 x 4 (the int64 product wraps to 0), no payload",
           l2l("train", *TINY_MNIST, f"optimizee.data.root={overflow.parent}", cwd=work))
    record("IDX files with 0 images", l2l("train", *TINY_MNIST, f"optimizee.data.root={mnist_dir(work / 'zero', 0)}",
                                           cwd=work))
    record("IDX labels of 255", l2l("train", *TINY_MNIST,
                                    f"optimizee.data.root={mnist_dir(work / 'labels', 40, 255)}", cwd=work))
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    subprocess.run(["chattr", "+i", str(locked)], capture_output=True)  # root ignores the mode
    record("an existing read-only (immutable) run dir", l2l("train", *TINY, f"hydra.run.dir={locked}", cwd=work))
    subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
    locked.chmod(0o755)
    record("`optimizee.dim=100000000`", l2l("train", *TINY, "optimizee.dim=100000000", cwd=work))
    cache = work / "cache"
    first = l2l("eval", *TINY_EVAL, f"checkpoint={best}", f"eval.tuning_cache={cache}", cwd=work)
    assert first.returncode == 0, first.stderr[-2000:]
    for entry in cache.glob("*.json"):
        entry.write_text("[1, 2]")
    record("tuning-cache entries that are JSON but not objects",
           l2l("eval", *TINY_EVAL, f"checkpoint={best}", f"eval.tuning_cache={cache}", cwd=work))
    (work / "nograd.py").write_text(
        "import torch\nclass F:\n    num_params = 3\n    def sample(self, n, s, gen, device='cpu', split='train'):\n"
        "        return torch.zeros(n, 3)\n    def initial_params(self, p):\n        return p.clone()\n"
        "    def loss(self, p, theta, step):\n        return theta.detach().sum(1)\n"
        "def make():\n    return F()\n")
    record("`optimizee=custom` whose loss carries no gradient",
           l2l("train", "optimizee=custom", "optimizee.target=nograd.py:make", *TINY[:1], "train.evaluate=false",
               "threads=1", cwd=work))

    # silent harm
    bomb = mnist_dir(work / "bomb")
    header = struct.pack(">IIII", 0x803, 300, 28, 28)
    with gzip.open(bomb / "train-images-idx3-ubyte.gz", "wb", compresslevel=9) as handle:
        handle.write(header)
        for _ in range(1400):
            handle.write(b"\x00" * 2**20)
    (bomb / "train-images-idx3-ubyte").unlink()
    started = time.monotonic()
    result = l2l("train", *TINY_MNIST, f"optimizee.data.root={bomb}", cwd=work)
    record(f"gzip IDX bomb ({(bomb / 'train-images-idx3-ubyte.gz').stat().st_size // 1024} KB, 1.4 GB inflated, "
           "header: 300 images)", result, f"{time.monotonic() - started:.1f} s")
    record("`optimizee=neural_art optimizee.style=/dev/zero`",
           l2l("train", "optimizee=neural_art", "optimizee.style=/dev/zero", "debug=tiny", cwd=work, timeout=120))
    nan = {**payload, "model": {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                                for k, v in payload["model"].items()}}
    torch.save(nan, work / "nan.pt")
    record("a checkpoint whose weights are NaN, `l2l eval`", l2l("eval", *TINY_EVAL, f"checkpoint={work / 'nan.pt'}",
                                                                 cwd=work))
    code = ("import torch; from l2l_cli import LearnedOptimizer as L\np = torch.nn.Parameter(torch.zeros(3))\n"
            "try:\n    L([p], checkpoint='nan.pt')\nexcept Exception as e:\n"
            "    import sys; print(f'{type(e).__name__}: {e}', file=sys.stderr); sys.exit(2)")
    record("the NaN checkpoint through `LearnedOptimizer`", python(code, work))
    code = ("import torch, warnings; from l2l_cli import LearnedOptimizer as L\nwarnings.simplefilter('error')\n"
            "p = torch.nn.Parameter(torch.tensor([1 + 2j, -3 + 1j]))\no = L([p], checkpoint='pretrained:quadratic')\n"
            "(p.abs() ** 2).sum().backward(); o.step()\nimport sys\n"
            "print(f'complex step: {p.detach().tolist()} (from [(1+2j), (-3+1j)])', file=sys.stderr)")
    record("`LearnedOptimizer` on complex parameters", python(code, work))
    photos = work / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for k in range(7):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(photos / f"p{k}.png")
    (photos / "p6.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # a PNG signature, then garbage
    naart = ["optimizee=neural_art", f"optimizee.content_dir={photos}", "debug=tiny", "optimizee.size=32",
             "train.evaluate=false", "threads=1"]
    result = l2l("train", *naart, f"hydra.run.dir={work / 'na'}", cwd=work, timeout=300)
    record("an unreadable photo among 7 in optimizee.content_dir", result,
           "no checkpoint written" if not (work / "na" / "checkpoints").exists() else "found after training")
    tiny_image = work / "one.png"
    Image.new("RGB", (1, 1)).save(tiny_image)
    record("`optimizee.style=<a 1x1 png>`", l2l("train", "optimizee=neural_art", f"optimizee.style={tiny_image}",
                                                 "debug=tiny", cwd=work, timeout=120))

    # smaller
    record("`eval.lr_grid=[1e308]` (every baseline diverges)",
           l2l("eval", *TINY_EVAL[:-1], "eval.lr_grid=[1e308]", f"checkpoint={best}", cwd=work))
    record("`resume=true train.iterations=2` on a run at iteration 7",
           l2l("train", *TINY, "train.iterations=2", "resume=true", f"hydra.run.dir={run}", cwd=work))
    record("`l2l eval optimizer=rnnprop checkpoint=<lstm best.pt>`",
           l2l("eval", *TINY_EVAL, "optimizer=rnnprop", f"checkpoint={best}", cwd=work))
    record("`l2l plot DIR --out DIR`", l2l("plot", str(run / "eval" if (run / "eval").is_dir() else run), "--out",
                                           str(run), cwd=work))
    read_end, write_end = os.pipe()
    os.close(read_end)
    result = l2l("pretrained", cwd=work, stdout=write_end)
    os.close(write_end)
    record("`l2l pretrained | head` (the reader gone before l2l writes)", result)

    print("| situation | exit | what l2l said (first line) | kept |")
    print("|---|---|---|---|")
    for situation, code, said, kept in ROWS:
        print(f"| {situation} | {code} | {said} | {kept} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
