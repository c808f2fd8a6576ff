"""LoRA fine-tuning of the encoder, shared by all heads (multi-task), with calibration.

The encoder gets one peft LoRA adapter; each head is a linear layer on the pooled embedding.
Every batch mixes rows of all heads, so the adapter learns features that serve the 4-label
and the 14-label task together. Rows are drawn per epoch with a per-label cap (large labels
are subsampled, a fresh sample each epoch), weighted so each file has its share of its head
(`HeadPlan.file_weights`) and each label counts equally within a file, and given keyboard
typos with a fixed probability (and, with `--crop-prob`, first cut down to a run of its
sentences, so a head also learns from short texts in the style of a user's question). With a
consistency weight, a typo'd text is also pulled
towards what the model predicts for its clean original (a KL term against that prediction,
taken without gradient and without dropout: "unsupervised data augmentation", Xie et al.,
NeurIPS 2020), so a slip moves the whole predicted distribution less, not only the top label.
With `--mask-missing-labels`, a row of a file that uses only some of its head's labels
competes among those only (the others are left out of its softmax), so a file without a label
does not teach that texts of its style are never that label.
After every epoch each head is calibrated on its validation rows, evaluated on its test rows
and saved, so a run that is stopped early still leaves usable weights.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelkit.augment import DEFAULT_TYPO_RATE, add_typos, crop_sentences
from modelkit.calibration import fit_linear_head, fit_temperature, softmax
from modelkit.data import Example, class_counts
from modelkit.encoder import Encoder, print_progress
from modelkit.heads import ADAPTER_DIR, save_head
from modelkit.heldout import source_name
from modelkit.options import TrainOptions
from modelkit.plan import HeadPlan, balance_weights, evaluate_plan, head_meta
from modelkit.scores import report

__all__ = [
    "LOGIT_SCALE",
    "LORA_TARGETS",
    "calibrate_and_save",
    "consistency_loss",
    "label_masks",
    "lora_meta",
    "masked_logits",
    "probe_heads",
    "train_lora",
]

#: Which encoder layers get a LoRA delta: attention projections and both feed-forward layers
#: of every transformer block (not the unused pooler).
LORA_TARGETS = (
    r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)"
    r"|attention\.output\.dense|intermediate\.dense|output\.dense)"
)

#: Fixed factor on the heads' logits while training on L2-normalised embeddings, whose dot
#: products are small; it is folded into the saved weights.
LOGIT_SCALE = 20.0


#: (head index, label index, loss weight, label-mask id; 0: every label of the head)
Target = tuple[int, int, float, int]
Row = tuple[str, list[Target]]
Sample = tuple[str, list[Target], str | None]  # (text as trained, targets, clean original)


def _subject_vocab(plan: HeadPlan) -> dict[str, int]:
    """Index of every (file, subject) pair among a plan's own training rows with a subject."""
    keys = sorted(
        {
            f"{f.name}:{e.subject}"
            for f in plan.files
            if not f.borrowed
            for e in f.train
            if e.subject
        }
    )
    return {k: i for i, k in enumerate(keys)}


def label_masks(plans: list[HeadPlan]) -> tuple[list[list[bool]], list[list[int]]]:
    """The labels each file's own rows use, for `--mask-missing-labels`.

    Returns `(masks, ids)`: `ids[h][i]` is the mask id of plan `h`'s file `i`, and
    `masks[id]` says which of that head's labels the file uses. Id 0 (an empty mask) means
    every label: a file that uses them all, or a borrowed part (whose missing labels say
    nothing about its rows).
    """
    masks: list[list[bool]] = [[]]
    ids: list[list[int]] = []
    for plan in plans:
        per_file = []
        for f in plan.files:
            used = {e.label for e in f.train}
            if f.borrowed or used >= set(plan.labels):
                per_file.append(0)
            else:
                masks.append([label in used for label in plan.labels])
                per_file.append(len(masks) - 1)
        ids.append(per_file)
    return masks, ids


def _draw_by_source(items: list[Example], cap: int, rng: random.Random) -> list[Example]:
    """At most `cap` of `items` (one label of one file), the sources sharing the draw equally:
    a source with fewer rows than its share gives all of them and the rest is split among
    the others. In the conversational file 9,000 cooking titles would otherwise crowd out
    ExpertQA's few hundred questions of the same label."""
    by_source: dict[str, list[Example]] = defaultdict(list)
    for e in items:
        by_source[source_name(e)].append(e)
    if len(by_source) == 1 or len(items) <= cap:
        return rng.sample(items, min(cap, len(items)))
    picked: list[Example] = []
    left = cap
    pools = sorted(by_source.values(), key=len)
    for k, pool in enumerate(pools):
        take = min(len(pool), left // (len(pools) - k))
        picked.extend(rng.sample(pool, take))
        left -= take
    return picked


def _epoch_rows(
    plans: list[HeadPlan],
    cap: int,
    rng: random.Random,
    aux: list[dict[str, int]] | None = None,
    aux_weight: float = 0.0,
    mask_ids: list[list[int]] | None = None,
) -> list[Row]:
    """One epoch's rows: (text, targets), each text once; see the module docstring.

    A text drawn for two heads (MMLU-Pro reuses MMLU stems) is encoded once and carries both
    targets, which saves a forward and backward pass. With `aux`, a row of plan `h` whose
    subject is in `aux[h]` also carries a target for auxiliary head `len(plans) + h`
    (predict the subject), weighted `aux_weight` times the row's own weight. With
    `mask_ids` (see `label_masks`), a target carries its file's mask id.
    """
    merged: dict[str, list[Target]] = {}
    n_targets = 0
    for h, plan in enumerate(plans):
        for i, (f, share) in enumerate(zip(plan.files, plan.file_weights(), strict=True)):
            mask = mask_ids[h][i] if mask_ids is not None else 0
            by_label: dict[str, list[Example]] = defaultdict(list)
            for e in f.train:
                by_label[e.label].append(e)
            for label, items in sorted(by_label.items()):
                picked = _draw_by_source(items, cap, rng)
                w = share / (len(by_label) * len(picked))
                for e in picked:
                    targets = merged.setdefault(e.text, [])
                    targets.append((h, plan.index(label), w, mask))
                    n_targets += 1
                    key = f"{f.name}:{e.subject}"
                    if aux is not None and key in aux[h]:
                        targets.append((len(plans) + h, aux[h][key], w * aux_weight, 0))
    # Each head's weights sum to 1; rescale so the mean target weight is 1 (loss as mean CE).
    scale = n_targets / len(plans)
    return [(t, [(h, y, w * scale, m) for h, y, w, m in targets]) for t, targets in merged.items()]


def _batches(
    rows: list[Sample], enc: Encoder, batch_size: int, rng: random.Random
) -> list[list[Sample]]:
    """Shuffle, then sort within windows of 32 batches by length, so padding stays small."""
    rng.shuffle(rows)
    window = batch_size * 32
    out = []
    for start in range(0, len(rows), window):
        chunk = rows[start : start + window]
        lengths = enc.token_lengths([r[0] for r in chunk])
        order = np.argsort(lengths, kind="stable")
        chunk = [chunk[i] for i in order]
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def masked_logits(
    logits: torch.Tensor, mask_of_row: list[int], masks: list[list[bool]]
) -> torch.Tensor:
    """`logits` with the labels each row's file does not use set to -inf (see `label_masks`)."""
    if not any(mask_of_row):
        return logits
    every = [True] * logits.shape[1]
    allowed = torch.tensor([masks[m] if m else every for m in mask_of_row])
    return logits.masked_fill(~allowed, float("-inf"))


def consistency_loss(
    enc: Encoder,
    heads: list[torch.nn.Linear],
    scale: float,
    batch: list[Sample],
    emb: torch.Tensor,
    row_idx: torch.Tensor,
    head_idx: torch.Tensor,
    weight: torch.Tensor,
    mask_idx: list[int] | None = None,
    masks: list[list[bool]] | None = None,
) -> torch.Tensor:
    """Sum over the batch's typo'd rows and `heads` of weight x KL(clean || typo'd).

    `emb` holds the embeddings of the texts as trained; the clean originals are encoded
    here in eval mode without gradient, so only the typo'd side learns. `row_idx`,
    `head_idx` and `weight` list the batch's targets (row, head, loss weight); targets of
    heads beyond `heads` (the auxiliary ones) take no part. With `mask_idx` (each target's
    mask id) and `masks` (see `label_masks`), both distributions are taken over the labels
    the row's file uses, as in the classification loss.
    """
    noisy = [j for j, sample in enumerate(batch) if sample[2] is not None]
    if not noisy:
        return torch.zeros(())
    position = torch.full((len(batch),), -1, dtype=torch.long)
    position[noisy] = torch.arange(len(noisy))
    was_training = enc.training
    enc.eval()
    with torch.no_grad():
        clean = enc([str(batch[j][2]) for j in noisy])
    enc.train(was_training)
    total = torch.zeros(())
    for h, head in enumerate(heads):
        sel = (head_idx == h) & (position[row_idx] >= 0)
        if not sel.any():
            continue
        picked = sel.nonzero().flatten().tolist()
        row_masks = [mask_idx[k] for k in picked] if mask_idx is not None else [0] * len(picked)
        target, student = (
            torch.log_softmax(masked_logits(scale * head(x), row_masks, masks or [[]]), dim=-1)
            for x in (clean[position[row_idx[sel]]], emb[row_idx[sel]])
        )
        target = target.detach()  # the clean side is the fixed reference
        # A masked label is -inf on both sides and has no probability: it adds nothing.
        gap = (target - student).masked_fill(torch.isinf(target), 0.0)
        kl = (target.exp() * gap).sum(dim=-1)
        total = total + (kl * weight[sel]).sum()
    return total


def probe_heads(
    plans: list[HeadPlan],
    enc: Encoder,
    heads: list[torch.nn.Linear],
    scale: float,
    aux: list[dict[str, int]] | None,
    l2: float,
) -> None:
    """Set `heads` to linear probes fitted on `enc`'s embeddings of the training rows.

    Fine-tuning from a head that already separates the labels changes the pretrained
    features less than fine-tuning from zeros, whose first steps shape the encoder for an
    untrained head ("linear probing, then fine-tuning", Kumar et al., ICLR 2022). Each plan's
    head is fitted on all its training rows, clean and weighted as in training (each file
    its share, each label equal within a file), without label masks; with `aux`, the
    auxiliary subject heads after the plans' heads are fitted on the rows that carry a
    subject in `aux[h]`.
    """
    texts = sorted({e.text for p in plans for f in p.files for e in f.train})
    vectors = enc.embed(texts, progress=print_progress("embedding for the probe heads"))
    at = {t: i for i, t in enumerate(texts)}
    for h, plan in enumerate(plans):
        parts = [f.train for f in plan.files]
        rows = [e for part in parts for e in part]
        w = balance_weights(parts, plan.file_weights())
        x = vectors[[at[e.text] for e in rows]]
        fits = [(heads[h], [plan.index(e.label) for e in rows], x, w)]
        if aux is not None:
            keys = [f"{f.name}:{e.subject}" for f in plan.files for e in f.train]
            idx = [i for i, key in enumerate(keys) if key in aux[h]]
            if idx:
                subjects = [aux[h][keys[i]] for i in idx]
                fits.append((heads[len(plans) + h], subjects, x[idx], w[idx]))
        for head, y, xs, ws in fits:
            y_arr = np.asarray(y, dtype=np.int64)
            weight, bias = fit_linear_head(xs, y_arr, ws, head.out_features, l2=l2)
            with torch.no_grad():
                head.weight.copy_(torch.from_numpy(weight / scale).float())
                head.bias.copy_(torch.from_numpy(bias / scale).float())
        print(f"probe head {plan.name}: fitted on {len(rows)} rows", file=sys.stderr)


def _save_adapter(model: Any, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    # The adapter never touches the embeddings; saying so also spares peft a look at the
    # base model's config under the name written below, which is not on this machine.
    model.save_pretrained(str(dest), save_embedding_layers=False)
    # peft records where the base model was loaded from: a local path that means nothing
    # on another machine. The build supplies the base encoder itself.
    cfg_path = dest / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = "sentence-transformers/all-MiniLM-L6-v2"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    readme = dest / "README.md"
    if readme.exists():
        readme.unlink()


def train_lora(plans: list[HeadPlan], enc: Encoder, options: TrainOptions, out: Path) -> None:
    """Fine-tune `enc` with a LoRA adapter and one linear head per plan; save after each epoch.

    Writes `out/<head>/{labels.json, head.npz, meta.json, encoder_lora/}`; the adapter is the
    same in every head folder. Progress goes to stderr.
    """
    from peft import LoraConfig, get_peft_model

    for p in enc.model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=0.05,
        target_modules=LORA_TARGETS,
        bias="none",
    )
    with warnings.catch_warnings():
        # transformers 5 deprecates an attribute peft still reads; harmless, and tests run
        # with warnings as errors.
        warnings.simplefilter("ignore", FutureWarning)
        enc.model = get_peft_model(enc.model, config)
    scale = LOGIT_SCALE if options.normalize else 1.0
    heads = [torch.nn.Linear(enc.hidden_size, len(p.labels)) for p in plans]
    # Auxiliary heads predict each row's subject (the finer source label: MMLU subject,
    # MMLU-Pro source, CLINC intent); they shape the shared encoder and are not saved.
    aux = [_subject_vocab(p) for p in plans] if options.aux_subject > 0 else None
    if aux is not None:
        heads += [torch.nn.Linear(enc.hidden_size, max(1, len(v))) for v in aux]
    for head in heads:
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    if options.probe_init:
        # The adapter's B matrices start at zero, so the encoder is still the pretrained one.
        probe_heads(plans, enc, heads, scale, aux, options.l2)
    lora_params = [p for p in enc.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [
            {"params": lora_params, "lr": options.lr, "weight_decay": 0.01},
            {
                "params": [q for head in heads for q in head.parameters()],
                "lr": max(options.lr, 2e-3),
                "weight_decay": 0.0,
            },
        ]
    )
    masks, mask_ids = label_masks(plans) if options.mask_missing_labels else ([[]], None)
    rng = random.Random(options.seed_of_run)
    epoch_size = len(
        _epoch_rows(
            plans, options.max_per_class, random.Random(0), aux, options.aux_subject, mask_ids
        )
    )
    steps_per_epoch = -(-epoch_size // options.batch_size)
    total = steps_per_epoch * options.epochs
    warmup = max(1, total // 16)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    n_params = sum(p.numel() for p in lora_params)
    print(
        f"LoRA r={options.lora_r}: {n_params} trainable encoder parameters; {options.epochs} "
        f"epochs x {steps_per_epoch} steps of {options.batch_size}",
        file=sys.stderr,
    )
    step = 0
    started = time.monotonic()
    for epoch in range(1, options.epochs + 1):
        enc.train()
        rows: list[Sample] = []
        for t, targets in _epoch_rows(
            plans, options.max_per_class, rng, aux, options.aux_subject, mask_ids
        ):
            if options.crop_prob > 0 and rng.random() < options.crop_prob:
                t = crop_sentences(t, rng)
            if rng.random() < options.typo_prob:
                rows.append((add_typos(t, rng, DEFAULT_TYPO_RATE), targets, t))
            else:
                rows.append((t, targets, None))
        running = 0.0
        for i, batch in enumerate(_batches(rows, enc, options.batch_size, rng), start=1):
            emb = enc([r[0] for r in batch])
            flat = [(j, *t) for j, (_, targets, _) in enumerate(batch) for t in targets]
            row_idx = torch.tensor([t[0] for t in flat])
            head_idx = torch.tensor([t[1] for t in flat])
            target = torch.tensor([t[2] for t in flat])
            weight = torch.tensor([t[3] for t in flat], dtype=torch.float32)
            loss = torch.zeros(())
            for h, head in enumerate(heads):
                sel = head_idx == h
                if sel.any():
                    logits = masked_logits(
                        scale * head(emb[row_idx[sel]]),
                        [flat[k][4] for k in sel.nonzero().flatten().tolist()],
                        masks,
                    )
                    ce = torch.nn.functional.cross_entropy(logits, target[sel], reduction="none")
                    loss = loss + (ce * weight[sel]).sum()
            if options.consistency > 0:
                # Ramped in with the learning rate: at first the heads predict nothing.
                ramp = min(1.0, (step + 1) / warmup)
                loss = loss + ramp * options.consistency * consistency_loss(
                    enc,
                    heads[: len(plans)],
                    scale,
                    batch,
                    emb,
                    row_idx,
                    head_idx,
                    weight,
                    [t[4] for t in flat],
                    masks,
                )
            loss = loss / len(flat)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            step += 1
            running += float(loss.item())
            if i % 20 == 0 or i == steps_per_epoch:
                elapsed = time.monotonic() - started
                eta = elapsed / step * (total - step)
                print(
                    f"epoch {epoch}/{options.epochs} step {i}/{steps_per_epoch} "
                    f"loss {running / 20:.4f} {step * options.batch_size / elapsed:.1f} rows/s "
                    f"eta {eta / 60:.0f} min",
                    file=sys.stderr,
                    flush=True,
                )
                running = 0.0
        calibrate_and_save(
            plans,
            enc,
            heads[: len(plans)],
            scale,
            options,
            out,
            lora_meta(plans, options.lora_r, options.lora_alpha),
            {
                "epochs_done": epoch,
                "epochs": options.epochs,
                "lr": options.lr,
                "batch_size": options.batch_size,
                "max_per_class": options.max_per_class,
                "typo_prob": options.typo_prob,
                "crop_prob": options.crop_prob,
                "aux_subject_weight": options.aux_subject,
                "consistency_weight": options.consistency,
                "mask_missing_labels": options.mask_missing_labels,
                "probe_init": options.probe_init,
            },
        )


def lora_meta(plans: list[HeadPlan], r: int, alpha: int, note: str = "") -> dict[str, Any]:
    """The `encoder_lora` entry of a head's meta.json."""
    return {
        "dir": ADAPTER_DIR,
        "shared_by": [p.name for p in plans],
        "note": note
        or (
            "one adapter trained for all heads at once (multi-task); every head folder "
            "holds an identical copy"
            if len(plans) > 1
            else "one adapter trained for this head alone"
        ),
        "r": r,
        "alpha": alpha,
        "targets": LORA_TARGETS,
    }


def calibrate_and_save(
    plans: list[HeadPlan],
    enc: Encoder,
    heads: list[torch.nn.Linear],
    scale: float,
    options: TrainOptions,
    out: Path,
    lora: dict[str, Any],
    training: dict[str, Any],
) -> None:
    """Fit each head's temperature on its validation rows, evaluate it on its test rows and
    write it with `enc`'s adapter to `out/<head>/`; `training` goes into meta.json.

    `heads[i]` gives logits for `plans[i]` as `scale * head(embedding)`.
    """
    enc.eval()
    for plan, head in zip(plans, heads, strict=True):
        weight = scale * head.weight.detach().numpy().astype(np.float64)
        bias = scale * head.bias.detach().numpy().astype(np.float64)
        val = [e for f in plan.files for e in f.val]
        yv = np.asarray([plan.index(e.label) for e in val], dtype=np.int64)
        xv = enc.embed([e.text for e in val])
        temperature = fit_temperature(xv @ weight.T + bias, yv)
        weight, bias = weight / temperature, bias / temperature
        val_report = report(plan.labels, softmax(xv @ weight.T + bias), yv)

        def probs_of(texts: list[str], w: Any = weight, b: Any = bias) -> Any:
            return softmax(enc.embed(texts) @ w.T + b)

        figures = evaluate_plan(plan, probs_of, options.seed)
        extra = {
            **training,
            "val_balanced_accuracy": round(val_report.balanced_accuracy, 4),
            "counts": {f.name: class_counts(f.train) for f in plan.files},
        }
        save_head(
            out / plan.name,
            plan.labels,
            weight,
            bias,
            head_meta(plan, options, temperature, figures, lora, extra),
        )
        _save_adapter(enc.model, out / plan.name / ADAPTER_DIR)
        done = f"epoch {training['epochs_done']} " if "epochs_done" in training else ""
        print(json.dumps({f"{done}{plan.name}": figures}), file=sys.stderr, flush=True)
