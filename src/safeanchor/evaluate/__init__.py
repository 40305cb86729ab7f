"""Generation, judges, safety and task evaluation.

The names below are imported lazily so ``safeanchor --help`` (which imports
``safeanchor.cli.evaluate``) does not pull in torch.

>>> from safeanchor.evaluate import EvalConfig
>>> EvalConfig(limit=40).harmful
('bundled:harmful:test',)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "generate": "generate", "generate_ids": "generate", "decoding_settings": "generate",
    "KeywordJudge": "judges", "is_refusal": "judges", "refusal_rate": "judges",
    "LLMJudge": "llm_judge", "LLMJudgeConfig": "llm_judge", "JudgeOutputError": "llm_judge",
    "JudgeConnectionError": "llm_judge", "parse_judge_output": "llm_judge",
    "ClassifierJudge": "classifier", "ClassifierConfig": "classifier",
    "EvalConfig": "suite", "evaluate_model": "suite",
    "write_eval": "results", "read_eval": "results", "summary_table": "results",
    "wilson_interval": "tasks", "extract_final_number": "tasks", "match_label": "tasks",
    "ServeConfig": "serve", "running_server": "serve", "make_server": "serve",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
