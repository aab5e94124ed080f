"""torchrun worker for test_distributed.py: trains exactly like ``minerals/train.py`` (same arguments), then each
process saves the weights it holds to ``<out>/weights.rank<R>.pt`` so the test can compare the ranks."""
import sys

import torch

from common.shard import launcher_env
from minerals import train

cfg = train.parse_args(sys.argv[1:])
model, _ = train.fit(cfg)
torch.save(model.state_dict(), f"{cfg.out}/weights.rank{launcher_env()[0]}.pt")
