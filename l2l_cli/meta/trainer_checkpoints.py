"""A meta-training's checkpoints: what best.pt and last.pt hold (everything a bit-identical resume needs), writing
them (one rank writes; the directory must still exist) and reading them back into a trainer."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from l2l_cli.core.checkpoints import CheckpointError, check_architecture, copy_checkpoint, save_checkpoint
from l2l_cli.core.checks import ConfigError
from l2l_cli.core.files import remember_checkpoint

# what restore reads without a default (load_checkpoint checked the types of those present)
RESUMED = ("optimizer", "model", "meta_optimizer", "rng", "iteration", "best_val", "best_iteration")


class TrainerCheckpoints:
    """``trainer``: a ``MetaTrainer``, whose parts (network, meta-optimizer, generator, average, curriculum,
    progress) make the payload."""

    def __init__(self, trainer, directory: Path, writes: bool):
        self.trainer, self.directory, self.writes = trainer, directory, writes
        if writes:
            self.directory.mkdir(parents=True, exist_ok=True)

    def payload(self) -> dict:
        t = self.trainer
        s = t.s
        binding = t.net.binding()
        return {
            "optimizer": asdict(s.optimizer),
            **({"parameter_groups": binding} if binding is not None else {}),
            "optimizee": asdict(s.optimizee) if s.optimizee is not None else {},
            "schedule": asdict(s.schedule),
            "estimator": asdict(t.estimator.config),
            "model": t.average.evaluated_state(),
            **({"trained_model": t.net.state_dict()} if t.average.on else {}),
            "meta_optimizer": t.meta_opt.state_dict(),
            "rng": t.gen.get_state(),
            "iteration": t.iteration,
            "best_val": t.best_val,
            "best_iteration": t.best_iteration,
            "skipped_total": t.guard.total,
            "history": [list(h) for h in t.history],
            "seed": s.seed,
            "member": s.member,
            "data_seed": s.data_seed,
            "curriculum": t.curriculum.state(),
            **({"balance": t.balance.state()} if t.balance is not None else {}),
        }

    def save(self, name: str) -> Path:
        path = self.directory / name
        if self.writes:  # every rank holds the same state; one writes it
            # the directory is made once, at the start: a run whose directory was removed stops and says so
            save_checkpoint(self.payload(), path, make_dirs=False)
            if name == "last.pt":
                remember_checkpoint(path, self.trainer.iteration)
        return path

    def restore(self, payload: dict, path) -> None:
        """A training checkpoint (last.pt) into the trainer; one line naming ``path`` when it is not one of this
        run's (load_checkpoint checked the fields' types already)."""
        t = self.trainer
        missing = [key for key in RESUMED if key not in payload]
        if missing:
            raise CheckpointError(f"checkpoint {path}: not a training checkpoint (no {missing[0]!r}); resume from a "
                                  "last.pt written by l2l train")
        check_architecture(path, payload["optimizer"], t.s.optimizer.architecture())
        if int(payload.get("member", 0)) != t.s.member:
            raise CheckpointError(f"checkpoint {path}: it is population member {payload.get('member', 0)}'s, "
                                  f"not member {t.s.member}'s")
        try:  # shapes and sizes only this run knows: the network's, the meta-optimizer's groups, the generator's
            restore_weights(t, payload)
            t.meta_opt.load_state_dict(payload["meta_optimizer"])
            t.gen.set_state(payload["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise CheckpointError(f"checkpoint {path}: its training state does not fit this run "
                                  f"({_first_line(exc)})") from None
        t.iteration = int(payload["iteration"])
        t.best_val = float(payload["best_val"])
        t.best_iteration = int(payload["best_iteration"])
        t.guard.total = int(payload.get("skipped_total", 0))
        t.history = [tuple(h) for h in payload.get("history", [])]
        t.curriculum.load_state(payload.get("curriculum", {}))
        if t.balance is not None:
            t.balance.load_state(payload.get("balance", {}))
        self._carry_over(Path(path).with_name("best.pt"))

    def start_from(self, payload: dict, path) -> None:
        """A checkpoint's learned-optimizer weights (those it validated: the average where it kept one) as this new
        run's starting point; the meta-optimizer, generator and progress stay this run's own."""
        t = self.trainer
        if "model" not in payload or "optimizer" not in payload:
            raise CheckpointError(f"checkpoint {path}: holds no learned optimizer (no 'model' and 'optimizer'); "
                                  "train.init takes a .pt written by l2l train or a pretrained:NAME")
        check_architecture(path, payload["optimizer"], t.s.optimizer.architecture())
        try:
            t.net.load_state_dict(payload["model"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path}: its weights do not fit this run's learned optimizer "
                                  f"({_first_line(exc)})") from None
        t.average.load(payload["model"])

    def _carry_over(self, source: Path) -> None:
        """Resuming into another run dir: bring the checkpoints along, so the new run is complete even when no later
        validation beats the best; without a best.pt, forget the old best so the next validation writes one."""
        target = self.directory / "best.pt"
        if source.resolve() == target.resolve():
            return
        self.save("last.pt")
        if source.is_file():
            if self.writes:
                copy_checkpoint(source, target)
        else:
            self.trainer.best_val, self.trainer.best_iteration = math.inf, -1


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's load_state_dict errors span many), or its type."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def check_iterations_left(done: int, iterations: int, path) -> None:
    """A resumed run asked to stop before where it is would end at once, its progress reading "130/40"."""
    if done > iterations:
        raise ConfigError(f"train.iterations={iterations}: below the {done} iterations the resumed checkpoint {path} "
                          f"has done; give train.iterations >= {done} (or evaluate that checkpoint with "
                          "`l2l eval checkpoint=...`)")


def restore_weights(trainer, payload: dict) -> None:
    """The weights of a checkpoint (trained and averaged); the meta-optimizer's state goes on."""
    trainer.net.load_state_dict(payload.get("trained_model", payload["model"]))
    trainer.average.load(payload["model"])
