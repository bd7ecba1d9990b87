"""The untrained adam_mlp of experiment=general as a checkpoint (the weights seed 0's meta-training starts from), so
that `l2l eval experiment=general checkpoint=runs/general_untrained/untrained.pt` measures what meta-training adds:

    python runs/general_untrained/make_checkpoint.py
"""

from dataclasses import asdict
from pathlib import Path

import torch

from l2l_cli.core.checkpoints import save_checkpoint
from l2l_cli.core.registry import OPTIMIZERS
from l2l_cli.optimizers.learned import build_learned

torch.manual_seed(0)  # as MetaTrainer seeds population member 0 of seed 0 before building the network
net = build_learned(OPTIMIZERS.get("adam_mlp").default_config())
save_checkpoint({"optimizer": asdict(net.config), "model": net.state_dict(), "iteration": 0, "best_val": float("inf"),
                 "history": [], "seed": 0, "data_seed": 0}, Path(__file__).with_name("untrained.pt"))
