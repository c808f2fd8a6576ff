"""How multi-turn conversations route under several ways of weighing earlier user turns.

Conversations are built from the conversational held-out rows (`chat_train.jsonl`, the group
split of `modelkit.heldout`, never trained on), two user turns each:

- *follow-up*: a held-out question, then a follow-up without topic words (`FOLLOW_UPS`,
  written for this check): the route should be the question's category;
- *topic change*: a held-out question of one category, then one of another: the route should
  be the last question's;
- *same topic*: two held-out questions of one category.

Every turn is classified alone, and each earlier turn joined with the last one, by the built
model; the schemes are then scored from those probabilities (the category a conversation
routes to, and the share that falls below the threshold and goes to the default model):

- `last`: the last user turn alone (`routing.history_user_turns: 0`);
- `join`: the earlier turn and the last one classified as one text;
- `mix d`: the turns classified apart, their distributions mixed with weight 1 for the last
  turn and `d` for the one before (`routing.history_weight: d`);
- `last+join c`: the last turn alone (weight 1) mixed with the joined text (weight `c`);
- `evidence d`: the turns classified apart and combined as the classifier does
  (`route_chat.combine` against `Engine.neutral_probabilities`, `routing.history_weight: d`).

Three-turn sets (`... after two turns`: two held-out questions of one category, then a
follow-up or a question of another) score the shipped rule with its two earlier turns.

    LORAROUTE_DATA_DIR=... python loadtest/multiturn_routes.py --per-set 200 --json out.json
    LORAROUTE_DATA_DIR=... python loadtest/multiturn_routes.py --per-set 100 --cost
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelkit.data import default_data_dir, load_jsonl
from modelkit.heldout import CHAT_FILE
from modelkit.plan import split_file
from services.classifier.engine import Engine
from services.classifier.route_chat import combine

FloatArray = npt.NDArray[np.float32]

#: Follow-ups that name no topic, as users write them.
FOLLOW_UPS = (
    "and what if they refuse?",
    "what if he refuses?",
    "ok, and how long does that take?",
    "can you explain that in more detail?",
    "what about the second one?",
    "is that normal?",
    "thanks! and after that?",
    "how much would that cost?",
    "what should I do?",
    "and if it gets worse?",
    "could it be something else?",
    "and then?",
    "why?",
    "are you sure?",
    "what are my options?",
    "can you give me an example?",
    "is there a faster way?",
    "what happens if I ignore it?",
    "does that apply to me too?",
    "and what if that doesn't work?",
)


def _rank(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def conversations(per_set: int) -> dict[str, list[tuple[list[str], str]]]:
    """The three sets: (user turns, expected category), `per_set` each, balanced by label."""
    rows = split_file(load_jsonl(default_data_dir() / CHAT_FILE), "group", 0)[2]
    by_label: dict[str, list[str]] = {}
    for e in sorted(rows, key=lambda e: _rank(e.text)):
        by_label.setdefault(e.label, []).append(e.text)
    labels = sorted(by_label)
    sets: dict[str, list[tuple[list[str], str]]] = {
        "follow-up": [],
        "topic change": [],
        "same topic": [],
        "follow-up after two turns": [],
        "topic change after two turns": [],
    }
    for i in range(per_set):
        a = labels[i % len(labels)]
        b = labels[(i + 1 + i // len(labels)) % len(labels)]
        if b == a:
            b = labels[(labels.index(a) + 1) % len(labels)]
        pick = lambda label, k: by_label[label][k % len(by_label[label])]  # noqa: E731
        first = pick(a, i)
        sets["follow-up"].append(([first, FOLLOW_UPS[i % len(FOLLOW_UPS)]], a))
        sets["topic change"].append(([first, pick(b, i + 7)], b))
        sets["same topic"].append(([first, pick(a, i + 13)], a))
        second = pick(a, i + 13)
        sets["follow-up after two turns"].append(
            ([first, second, FOLLOW_UPS[(i + 5) % len(FOLLOW_UPS)]], a)
        )
        sets["topic change after two turns"].append(([first, second, pick(b, i + 7)], b))
    return sets


def cost(engine: Engine, conversations: list[list[str]], trials: int = 3) -> int:
    """Print the median CPU ms per request classified alone, sending 1, 2 or 3 turns."""
    for turns in (1, 2, 3):
        runs = []
        for _ in range(trials):
            start = time.process_time()
            for conversation in conversations:
                engine.classify(conversation[::-1][:turns])
            runs.append((time.process_time() - start) / len(conversations) * 1000)
        print(f"{turns} turn(s): median {statistics.median(runs):.1f} ms CPU per request {runs}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models") / "loraroute-domain")
    p.add_argument("--per-set", type=int, default=200)
    p.add_argument("--threshold", type=float, default=0.6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--cost",
        action="store_true",
        help="instead: CPU time per request classified alone, by how many turns it sends",
    )
    args = p.parse_args(argv)
    engine = Engine.from_model_dir(args.model, intra_op_threads=args.threads)
    cats = list(engine.labels)
    sets = conversations(args.per_set)
    if args.cost:
        return cost(engine, [t for t, _ in sets["follow-up after two turns"]])

    def probs(texts: list[str]) -> FloatArray:
        return np.stack(
            [np.asarray(list(c.probabilities.values())) for c in engine.classify(texts)]
        )

    neutral = engine.neutral_probabilities()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, convs in sets.items():
        print(f"classifying {name}: {len(convs)} conversations", file=sys.stderr, flush=True)
        turns = len(convs[0][0])
        # Per turn, newest first: [n, labels] label probabilities.
        alone = [probs([t[-1 - k] for t, _ in convs]) for k in range(turns)]
        joined = probs(["\n".join(t) for t, _ in convs])
        truth = np.asarray([cats.index(y) for _, y in convs])
        schemes: dict[str, FloatArray] = {"last": alone[0], "join": joined}
        if turns == 2:
            for d in (0.3, 0.5, 0.7, 1.0):
                schemes[f"mix {d}"] = (alone[0] + d * alone[1]) / (1 + d)
            for c in (0.5, 1.0, 2.0):
                schemes[f"last+join {c}"] = (alone[0] + c * joined) / (1 + c)
        for d in (0.3, 0.5, 0.7):
            weights = [d**k for k in range(turns)]
            schemes[f"evidence {d}"] = np.stack(
                [combine([a[i] for a in alone], weights, neutral) for i in range(len(convs))]
            )
        if turns > 2:
            for d in (0.3, 0.5, 0.7):
                schemes[f"evidence {d}, one earlier turn"] = np.stack(
                    [
                        combine([alone[0][i], alone[1][i]], [1.0, d], neutral)
                        for i in range(len(convs))
                    ]
                )
        out[name] = {}
        for scheme, mixed in schemes.items():
            best = mixed.argmax(axis=1)
            confident = mixed.max(axis=1) >= args.threshold
            out[name][scheme] = {
                "accuracy": float(np.mean(best == truth)),
                "routed_right": float(np.mean((best == truth) & confident)),
                "below_threshold": float(np.mean(~confident)),
            }
    for name, scores in out.items():
        print(f"\n{name}: right / routed right / below threshold (%)")
        for scheme, f in scores.items():
            print(
                f"| {scheme} | {100 * f['accuracy']:.1f} / {100 * f['routed_right']:.1f} / "
                f"{100 * f['below_threshold']:.1f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
