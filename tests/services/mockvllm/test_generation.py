"""Deterministic text, lengths, stop strings, echo."""

from __future__ import annotations

from schemas.openai import ChatMessage
from services.mockvllm.generation import (
    count_tokens,
    echo_tokens,
    generate,
    message_text,
    render_chat,
)


def test_same_weights_and_prompt_give_the_same_tokens() -> None:
    a = generate("/loras/a", "hi", max_tokens=None)
    assert a == generate("/loras/a", "hi", max_tokens=None)
    assert a.text != generate("/loras/b", "hi", max_tokens=None).text
    assert a.text != generate("/loras/a", "hello", max_tokens=None).text
    assert a.text != generate("/loras/a", "hi", max_tokens=None, choice=1).text


def test_lengths() -> None:
    natural = generate("m", "p", max_tokens=None, length_range=(10, 10))
    assert (len(natural.tokens), natural.finish_reason) == (10, "stop")
    cut = generate("m", "p", max_tokens=4, length_range=(10, 10))
    assert (len(cut.tokens), cut.finish_reason) == (4, "length")
    assert cut.tokens == natural.tokens[:4]
    forced = generate("m", "p", max_tokens=30, ignore_eos=True, length_range=(10, 10))
    assert (len(forced.tokens), forced.finish_reason) == (30, "length")
    longer = generate("m", "p", max_tokens=None, min_tokens=12, length_range=(10, 10))
    assert len(longer.tokens) == 12


def test_stop_string_cuts_before_it() -> None:
    full = generate("m", "p", max_tokens=None, length_range=(20, 20)).text
    stop = full[25:30]
    g = generate("m", "p", max_tokens=None, length_range=(20, 20), stop=["zzz", stop])
    assert g.text == full[: full.index(stop)]
    assert (g.finish_reason, g.stop_reason) == ("stop", stop)


def test_echo_tokens_reassemble_the_body() -> None:
    body = '{"model":"x","messages":[{"role":"user","content":"héllo"}]}'.encode()
    pieces = echo_tokens(body, piece=7)
    assert "".join(pieces) == body.decode() and all(len(p) <= 7 for p in pieces)


def test_rendering_and_counting() -> None:
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content=[{"type": "text", "text": "Hi"}, {"type": "image_url"}]),
    ]
    assert message_text(messages[1]) == "Hi"
    assert (
        render_chat(messages)
        == "<s><|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    )
    assert count_tokens("Hello, world!") == 4
