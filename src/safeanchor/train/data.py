"""The training set of a run: configured sources, plus safety samples when the method asks for them.

>>> # dataset, report = build_train_dataset(config, tokenizer)
>>> # report["sources"] -> {"task:arithmetic:train": 2000, "safety": 256}
"""

from __future__ import annotations

from typing import Any

from ..data import Record, load_source
from ..methods.safety_data import safety_records
from ..data.batches import SFTDataset


def training_records(config) -> tuple[list[Record], dict[str, Any]]:
    """Records of ``config.train_data`` (each source limited to ``max_train_samples``), then the
    safety samples if ``config.method`` mixes them in. Returns the records and counts per source."""
    records: list[Record] = []
    counts: dict[str, int] = {}
    for source in config.train_data:
        recs = load_source(source, columns=config.train_columns, require_response=True,
                           limit=config.max_train_samples)
        counts[source] = len(recs)
        records.extend(recs)
    if config.plan.safety_data:
        safety = safety_records(config.safety_samples, harmful=config.safety_harmful,
                                refusals=config.safety_refusals, seed=config.safety_seed)
        counts["safety"] = len(safety)
        # Benign first, safety after: sample_idx stays readable; the trainer shuffles each epoch.
        records.extend(safety)
    return records, {"sources": counts, "safety_data": {
        "n": counts.get("safety", 0), "harmful": config.safety_harmful, "refusals": config.safety_refusals,
        "seed": config.safety_seed} if config.plan.safety_data else None}


def refusal_target(record: Record) -> int:
    """A record's target for the refusal-decision method: 1 (refuse) for a safety sample or a record
    marked ``refuse: true`` or ``kind: harmful``, else 0 (answer)."""
    meta = record.meta
    return int(bool(meta.get("refuse")) or bool(meta.get("safety_sample")) or meta.get("kind") == "harmful")


def build_train_dataset(config, tokenizer) -> tuple[SFTDataset, dict[str, Any]]:
    """Encode the run's records (response-only labels, ``sample_idx``) and describe them."""
    from ..methods.refusal_decision import TARGET_KEY

    records, report = training_records(config)
    dataset = SFTDataset.from_records(tokenizer, records, max_length=config.max_length)
    if "refusal_decision" in config.plan.regularizers:  # the method's targets travel with the examples
        for example, record in zip(dataset.examples, records):
            example[TARGET_KEY] = refusal_target(record)
    report.update(dataset.summary())
    report["max_length"] = config.max_length
    return dataset, report


__all__ = ["build_train_dataset", "training_records"]
