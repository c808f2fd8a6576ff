"""Build a tiny random Llama with a chat template and three LoRA adapters, offline.

Usage: ``python tests/vllm/build_tiny_model.py OUT_DIR``. Writes ``OUT_DIR/tiny-llama`` (base model and
tokenizer, chat template included) and ``OUT_DIR/<name>`` for each adapter in ``ADAPTERS``. Needs torch,
transformers, tokenizers and peft (the main venv's ``build`` extra); touches no network. The same
versions give byte-identical files, so greedy outputs are stable between runs.

The recipe is the one in ``shared/reference/real-vllm-on-cpu.md`` section 4. Two choices matter:
``init_lora_weights=False`` (PEFT's default zero B matrix would make every adapter equal the base
model, and no test could tell adapters apart) and the rank (must not exceed the server's
``--max-lora-rank``, or loading fails).
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

#: Adapter name -> (torch seed, rank). The first three are the shipped config's LoRA names, served
#: with --max-lora-rank 8; rank16-lora is never served: loading it at run time must fail (rank > 8).
ADAPTERS: dict[str, tuple[int, int]] = {
    "technical-lora": (100, 8),
    "medical-lora": (101, 8),
    "legal-lora": (102, 8),
    "rank16-lora": (103, 16),
}
MAX_MODEL_LEN = 512
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + "
    "'<|end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def _corpus() -> list[str]:
    """A fixed training text: docstrings of a few standard-library modules plus some sentences."""
    import argparse
    import collections
    import json as json_mod
    import pathlib
    import textwrap

    texts = [
        "How do I restart the server? Check the logs, then restart the service.",
        "The patient reports a headache and a mild fever since yesterday.",
        "The contract is void if either party breaches the confidentiality clause.",
    ]
    for mod in (argparse, collections, json_mod, pathlib, textwrap):
        for _, obj in sorted(vars(mod).items()):
            doc = inspect.getdoc(obj)
            if doc:
                texts.append(doc)
    return texts


def build(out: Path) -> None:
    """Write the base model and the adapters under ``out`` (created if needed)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    base_dir = out / "tiny-llama"

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_MODEL_LEN,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    if not (base_dir / "chat_template.jinja").exists():
        (base_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    for name, (seed, rank) in ADAPTERS.items():
        torch.manual_seed(seed)
        base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
        lora = LoraConfig(
            r=rank,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj"],
            task_type="CAUSAL_LM",
            init_lora_weights=False,
        )
        peft_model = get_peft_model(base, lora)
        peft_model.save_pretrained(out / name)
        # PEFT records the base path as given; point it at the served directory instead.
        cfg_path = out / name / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(base_dir)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    build(Path(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
