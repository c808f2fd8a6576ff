"""Every knob of the mock vLLM in one frozen value; `cli.py` builds it, `app.py` hands it out.

Names follow vLLM's flags where vLLM has one. Defaults are vLLM's, except where a note says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULT_FINGERPRINT", "DEFAULT_OUTPUT_TOKENS", "LoraModule", "MockSettings"]

#: vLLM's shape (vllm-<version>-<hash8>); the hash spells "mock".
DEFAULT_FINGERPRINT = "vllm-0.32.0-6d6f636b"
DEFAULT_OUTPUT_TOKENS = (8, 24)


@dataclass(frozen=True, slots=True)
class LoraModule:
    """One static adapter (``--lora-modules name=path`` or the JSON form)."""

    name: str
    path: str
    base_model_name: str | None = None


@dataclass(frozen=True, slots=True)
class MockSettings:
    model: str = "base-model"
    served_model_names: tuple[str, ...] = ()
    lora_modules: tuple[LoraModule, ...] = ()
    max_model_len: int = 4096
    max_lora_rank: int = 16
    api_key: str | None = None
    runtime_lora_updating: bool = False
    #: "adapter": a runtime load needs a directory with adapter_config.json (vLLM); "any": any path.
    lora_path_check: str = "adapter"
    legacy_errors: bool = False
    #: Append " Valid aliases: <base names>." to the unknown-model message (vLLM 0.29+).
    valid_aliases_suffix: bool = True
    system_fingerprint: str = DEFAULT_FINGERPRINT
    version: str = "0.32.0"
    enable_force_include_usage: bool = False
    # generation
    echo: bool = False
    default_output_tokens: tuple[int, int] = DEFAULT_OUTPUT_TOKENS
    # latency model
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    lora_load_ms: float = 0.0
    lora_swap_ms: float = 0.0
    # capacity
    max_num_seqs: int = 256
    #: Largest `n` (vLLM's `VLLM_MAX_N_SEQUENCES`); above it a 400, as in vLLM.
    max_n_sequences: int = 16384
    max_num_queued_reqs: int | None = None
    max_loras: int = 1
    #: vLLM's default: ``max_loras``.
    max_cpu_loras: int | None = None
    # faults, as given on the command line (parsed by faults.parse_fault)
    faults: tuple[str, ...] = field(default_factory=tuple)

    @property
    def served_names(self) -> tuple[str, ...]:
        """The base model's served names; responses for the base model report the first."""
        return self.served_model_names or (self.model,)
