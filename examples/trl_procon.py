"""A plain TRL SFT script (prompt-completion data, LoRA) in which ProCon is switched on by two
changed lines, marked below.

    HF_HUB_OFFLINE=1 python examples/trl_procon.py                     # the embedded SmolLM2
    python examples/trl_procon.py --model meta-llama/Llama-2-7b-chat-hf --max-steps -1
"""

import argparse

import torch
from datasets import Dataset
from peft import LoraConfig

# from trl import SFTConfig, SFTTrainer
from safeanchor import SafeSFTConfig as SFTConfig, SafeSFTTrainer as SFTTrainer  # changed line 1 of 2
from safeanchor import load_model
from safeanchor.data.tasks import generate_task

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
ap.add_argument("--max-steps", type=int, default=12)
ap.add_argument("--samples", type=int, default=96)
ap.add_argument("--output-dir", default="runs/trl_procon")
cli = ap.parse_args()

model, tokenizer = load_model(cli.model)  # any causal LM; AutoModelForCausalLM.from_pretrained works too
rows = generate_task("arithmetic", "train", n=cli.samples, seed=0)
dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                              "completion": [{"role": "assistant", "content": r["response"]}]} for r in rows])
args = SFTConfig(output_dir=cli.output_dir, per_device_train_batch_size=8, max_steps=cli.max_steps, num_train_epochs=1,
                 learning_rate=2e-4, logging_steps=1, max_length=256, bf16=torch.cuda.is_available(), report_to="none",
                 method="procon", alpha=0.1)  # changed line 2 of 2: the method and its coefficient
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                     peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
trainer.train()
trainer.save_model()
