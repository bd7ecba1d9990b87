"""A trained learned optimizer as a ``torch.optim.Optimizer`` for any model.

    from l2l_cli import LearnedOptimizer
    opt = LearnedOptimizer(model.parameters(), checkpoint="pretrained:mnist")   # or a best.pt from `l2l train`
    loss.backward(); opt.step(); opt.zero_grad()

The model is one optimizee whose coordinates are all its parameters. Only coordinatewise architectures (whose update
of a coordinate depends on that coordinate's gradients alone, like the paper's LSTM) can serve: their state can be
kept per parameter tensor, created lazily, saved with ``state_dict()`` and cut or joined as parameters come and go.
Within a step, the parameters of a group that have gradients (and share device, dtype and step count) go through the
learned optimizer in one call; each group's ``lr`` multiplies the learned update (1.0: as meta-trained), so learning
rate schedulers work as with any torch optimizer. A complex parameter is optimized as its real and imaginary parts, two
coordinates per element (``torch.view_as_real``, as torch.optim.Adam does).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from l2l_cli.core.checkpoints import CheckpointError
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.optimizers.learned.compiled import maybe_compile
from l2l_cli.optimizers.learned.loading import load_learned_optimizer


def flatten_state(state: Any) -> List[torch.Tensor]:
    """The tensors of a state nest (lists and tuples of tensors), in order."""
    if isinstance(state, torch.Tensor):
        return [state]
    return [leaf for part in state for leaf in flatten_state(part)]


def unflatten_state(template: Any, leaves: List[torch.Tensor]) -> Any:
    """The nest of ``template`` with its tensors replaced by ``leaves``, in order."""
    it = iter(leaves)

    def build(node):
        if isinstance(node, torch.Tensor):
            return next(it)
        return type(node)(build(part) for part in node)

    return build(template)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 (and complex128) parameters get a float64 learned optimizer; float32, float16, bfloat16 and the other
    complex ones a float32 one."""
    return torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32


def real_view(t: torch.Tensor) -> torch.Tensor:
    """A complex tensor as real coordinates (``torch.view_as_real``: real and imaginary parts two coordinates each,
    as torch.optim.Adam treats them), a view, so updating it updates ``t``; a real tensor as it is."""
    return torch.view_as_real(t) if t.is_complex() else t


def coordinates(p: torch.Tensor) -> int:
    """The learned optimizer's coordinates for a parameter: two per complex element."""
    return p.numel() * (2 if p.is_complex() else 1)


@dataclass
class _Slab:
    """The learned optimizer's state for several parameter tensors, joined along the coordinate (last) dimension."""

    params: Tuple[torch.Tensor, ...]
    sizes: List[int]
    state: Any
    step: int


class LearnedOptimizer(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` around a meta-trained coordinatewise learned optimizer.

    ``checkpoint``: a best.pt / last.pt written by `l2l train`, or ``pretrained:<name>`` (`l2l pretrained` lists
    them). ``lr`` multiplies the learned update. Parameters without gradients are skipped, as torch's optimizers do.
    ``compile=True`` runs the learned optimizer's step through torch.compile (its first steps wait for the compiler;
    docs/performance.md, for what it gains). ``total_steps``: how many steps the training will take, for an
    architecture that uses the fraction of training done (``adam_mlp``; without it, its ``default_horizon``).
    """

    def __init__(self, params, checkpoint, lr: float = 1.0, compile: bool = False, total_steps: int | None = None):
        if not lr >= 0:
            raise ValueError(f"lr: must be >= 0 (it multiplies the learned update), got {lr}")
        if total_steps is not None and not (isinstance(total_steps, int) and not isinstance(total_steps, bool)
                                          and total_steps >= 1):
            raise ValueError(f"total_steps: must be a whole number >= 1 (the training's length in steps), got "
                             f"{total_steps!r}")
        net, _ = load_learned_optimizer(checkpoint)
        if not net.coordinatewise:
            usable = [n for n in OPTIMIZERS.learned() if getattr(OPTIMIZERS.get(n).build, "coordinatewise", False)]
            raise CheckpointError(
                f"checkpoint {checkpoint}: its learned optimizer {net.name!r} shares information between "
                f"coordinates, so it cannot run as a torch optimizer on a model's parameters; coordinatewise "
                f"architectures: {', '.join(usable)}")
        super().__init__(params, {"lr": lr})
        self.checkpoint = str(checkpoint)
        self.compile = compile
        self.total_steps = total_steps
        self.net = net.eval().requires_grad_(False)
        self._nets: Dict[tuple, torch.nn.Module] = {}
        self._slabs: Dict[int, Tuple[tuple, List[_Slab]]] = {}  # group index -> (its params with grads, slabs)
        self._template = self.net.init_state(torch.zeros(1, 1))

    # -- the learned optimizer on each device and dtype ----------------------------------------------------------
    def _net_for(self, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        key = (device, dtype)
        if key not in self._nets:
            net = copy.deepcopy(self.net).to(device=device, dtype=dtype)
            maybe_compile(net, self.compile)
            self._nets[key] = net
        return self._nets[key]

    def _fresh_state(self, p: torch.Tensor) -> List[torch.Tensor]:
        net = self._net_for(p.device, compute_dtype(p.dtype))
        theta = torch.zeros(1, coordinates(p), device=p.device, dtype=compute_dtype(p.dtype))
        return flatten_state(net.init_state(theta))

    # -- per-parameter state <-> slabs ---------------------------------------------------------------------------
    def _store(self, slab: _Slab) -> None:
        """Each parameter's share of a slab into ``self.state[p]``: views of the slab's current tensors."""
        pieces = [leaf.split(slab.sizes, dim=-1) for leaf in flatten_state(slab.state)]
        for k, p in enumerate(slab.params):
            self.state[p] = {"step": torch.tensor(float(slab.step)), "learned_state": [piece[k] for piece in pieces]}

    def _sync(self) -> None:
        for _, slabs in self._slabs.values():
            for slab in slabs:
                self._store(slab)

    def _slabs_for(self, index: int, params: List[torch.Tensor]) -> List[_Slab]:
        """The slabs of a group for this set of parameters: reused while it stays the same, else rebuilt from the
        per-parameter state (parameters seen for the first time start from a fresh state)."""
        key = tuple(id(p) for p in params)
        cached = self._slabs.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        if cached is not None:
            for slab in cached[1]:
                self._store(slab)
        buckets: Dict[tuple, List[torch.Tensor]] = {}
        for p in params:
            step = int(self.state[p]["step"]) if "step" in self.state.get(p, {}) else 0
            buckets.setdefault((p.device, compute_dtype(p.dtype), step), []).append(p)
        slabs = []
        for (device, dtype, step), group in buckets.items():
            leaves = [self._param_leaves(p, device, dtype) for p in group]
            joined = [torch.cat(parts, dim=-1) for parts in zip(*leaves, strict=True)]
            slabs.append(_Slab(tuple(group), [coordinates(p) for p in group],
                               unflatten_state(self._template, joined), step))
        self._slabs[index] = (key, slabs)
        return slabs

    def _param_leaves(self, p: torch.Tensor, device, dtype) -> List[torch.Tensor]:
        saved = self.state.get(p, {}).get("learned_state")
        if saved is None:
            return self._fresh_state(p)
        return [leaf.to(device=device, dtype=dtype) for leaf in saved]

    # -- torch.optim.Optimizer -------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("LearnedOptimizer does not support sparse gradients")
            for slab in self._slabs_for(index, params):
                dtype = compute_dtype(slab.params[0].dtype)
                net = self._net_for(slab.params[0].device, dtype)
                grad = torch.cat([real_view(p.grad).reshape(-1).to(dtype) for p in slab.params]).unsqueeze(0)
                # per-tensor statistics see this slab's tensors
                net.bind(tuple((str(k), size) for k, size in enumerate(slab.sizes)), self.total_steps)
                update, slab.state = net.step(grad, slab.state, slab.step)
                slab.step += 1
                update = update.reshape(-1)
                if group["lr"] != 1.0:
                    update = update * group["lr"]
                for p, piece in zip(slab.params, update.split(slab.sizes), strict=True):
                    real = real_view(p)
                    real.add_(piece.view_as(real).to(real.dtype))
        return loss

    def state_dict(self) -> Dict[str, Any]:
        self._sync()
        state = super().state_dict()
        state["learned_optimizer"] = {"architecture": self.net.config.architecture(), "checkpoint": self.checkpoint}
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        theirs = state_dict.get("learned_optimizer", {}).get("architecture")
        ours = self.net.config.architecture()
        if theirs != ours:
            raise ValueError(f"load_state_dict: this state is from learned optimizer {theirs}, this optimizer "
                             f"runs {ours} ({self.checkpoint})")
        saved = {k: [t.clone() for t in v.get("learned_state", [])] for k, v in state_dict["state"].items()}
        state_dict = {k: v for k, v in state_dict.items() if k != "learned_optimizer"}
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        template = flatten_state(self._template)
        for index, leaves in saved.items():
            p = params[int(index)]
            if len(leaves) != len(template) or any(
                    leaf.shape[:-1] != t.shape[:-1] or leaf.shape[-1] != coordinates(p)
                    for leaf, t in zip(leaves, template, strict=False)):
                raise ValueError(f"load_state_dict: the state of parameter {index} does not fit a parameter of "
                                 f"{coordinates(p)} real coordinates for {ours['name']}")
            # torch casts state to the parameter's dtype; the learned optimizer's own dtype is kept instead
            self.state[p]["learned_state"] = [leaf.to(device=p.device, dtype=compute_dtype(p.dtype))
                                              for leaf in leaves]
        self._slabs.clear()
