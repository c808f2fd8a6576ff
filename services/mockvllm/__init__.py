"""A faithful vLLM stand-in (``loraroute mock-vllm``): vLLM 0.32's OpenAI API, LoRA cards, errors,
SSE frames and metrics, with knobs for latency, capacity and faults. See docs/mock-vllm.md."""

from services.mockvllm.app import build_app
from services.mockvllm.settings import LoraModule, MockSettings

__all__ = ["LoraModule", "MockSettings", "build_app"]
