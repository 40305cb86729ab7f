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


def build_train_dataset(config, tokenizer, regularizers=()) -> tuple[SFTDataset, dict[str, Any]]:
    """Encode the run's records (response-only labels, ``sample_idx``) and describe them; each of
    ``regularizers`` adds the per-example fields it needs (:meth:`Regularizer.example_fields`)."""
    records, report = training_records(config)
    dataset = SFTDataset.from_records(tokenizer, records, max_length=config.max_length)
    for reg in regularizers:
        for example, record in zip(dataset.examples, records):
            example.update(reg.example_fields(record))
    report.update(dataset.summary())
    report["max_length"] = config.max_length
    return dataset, report


__all__ = ["build_train_dataset", "training_records"]
