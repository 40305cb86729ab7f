"""Each rank logs numbers through ``distributed.mean_over_ranks`` (started by torchrun, 2 ranks):
``same`` logs the same names on both ranks, ``count`` a different number of names, ``names`` the same
number under other names. Prints ``rank <r> <json>`` or ``rank <r> error <message>``.
Not a test module itself (no ``test_`` prefix)."""

import json
import sys

import torch.distributed as dist

from safeanchor.distributed import mean_over_ranks

dist.init_process_group("gloo")
r = dist.get_rank()
case = sys.argv[1]
values = {"loss": 1.0 + r, "procon/raw": 10.0 * r}
if case == "count" and r == 1:
    values["extra"] = 3.0
if case == "names" and r == 1:
    values = {"loss": 2.0, "asft/raw": 10.0}
try:
    print(f"rank {r} {json.dumps(mean_over_ranks(values))}", flush=True)
except RuntimeError as e:
    print(f"rank {r} error {e}", flush=True)
dist.barrier()  # both ranks have answered; a clean teardown, so neither exits while the other still talks
dist.destroy_process_group()
