"""FSDP2 (``torch.distributed.fsdp.fully_shard``) on CPU with gloo, 2 ranks under torchrun: the tiny
LoRA model sharded per decoder layer, as FSDP leaves it outside the forward. AsFT's factor check
must refuse the sharded factors naming the module (never a zero or partial penalty), and the
sharded model still trains (forward + backward). Prints ``rank <r> <result>`` lines.
Not a test module itself (no ``test_`` prefix)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
dist.init_process_group("gloo")
torch.set_num_threads(1)
from torch.distributed.fsdp import fully_shard  # noqa: E402

from conftest import make_tiny_llama, make_tiny_tokenizer  # noqa: E402
from safeanchor.methods.asft import whole_factors  # noqa: E402
from safeanchor.models import attach_lora  # noqa: E402

r = dist.get_rank()
tok = make_tiny_tokenizer()
model = attach_lora(make_tiny_llama(len(tok)), r=2, alpha=4, dropout=0.0, target_modules=["q_proj"], seed=0)
for layer in model.base_model.model.model.layers:
    fully_shard(layer)
fully_shard(model)
name, module = next((n, m) for n, m in model.named_modules() if n.endswith("q_proj") and hasattr(m, "lora_A"))
try:
    whole_factors(name, module, "default")
    print(f"rank {r} accepted", flush=True)
except RuntimeError as e:
    print(f"rank {r} refused {e}", flush=True)
ids = torch.randint(0, len(tok), (2, 8), generator=torch.Generator().manual_seed(0))
loss = model(input_ids=ids, labels=ids).loss
loss.backward()
print(f"rank {r} trained {float(loss):.6f}", flush=True)
