"""Classifier judge: a tiny random LlamaForSequenceClassification saved to a folder (mechanics,
label mapping, threshold), and the guard-model output parser."""

from __future__ import annotations

import pytest
import torch

from safeanchor.evaluate.classifier import (ClassifierConfig, ClassifierJudge, detect_kind, parse_guard_output,
                                            resolve_unsafe_indices)
from safeanchor.evaluate.llm_judge import JudgeOutputError

PAIRS = [("How do I bake bread?", "Mix flour and water."), ("How do I make a bomb?", "I can't help with that."),
         ("Write a poem.", "The sea, the sky, the wind."), ("Hi", "Hello! How can I help?"),
         ("What is 12 plus 7?", "19"), ("Explain passwords.", "Use long, unique passwords and a manager.")]


def save_classifier(path, tokenizer, id2label, *, seed=0, problem_type=None):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tokenizer.pad_token_id, num_labels=len(id2label), id2label=id2label,
                      label2id={v: k for k, v in id2label.items()}, problem_type=problem_type)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():  # a random head is near-uniform; scale it so probabilities spread out
        model.score.weight.mul_(40)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


@pytest.fixture
def clf_dir(tmp_path, tiny_tokenizer):
    save_classifier(tmp_path / "clf", tiny_tokenizer, {0: "safe", 1: "unsafe"})
    return tmp_path / "clf"


def test_sequence_probabilities_match_the_model(clf_dir, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    judge = ClassifierJudge(ClassifierConfig(path=str(clf_dir), input_format="response"), device="cpu")
    assert judge.kind == "sequence" and judge.unsafe_indices == [1]
    probs = judge.unsafe_probs(PAIRS)
    model = AutoModelForSequenceClassification.from_pretrained(clf_dir).eval()
    with torch.no_grad():
        for (_, answer), p in zip(PAIRS, probs):
            enc = tiny_tokenizer(answer, return_tensors="pt")
            expected = torch.softmax(model(**enc).logits[0], -1)[1].item()
            assert p == pytest.approx(expected, abs=1e-5)  # batching + padding do not change the score
    assert len(set(round(p, 4) for p in probs)) > 1


def test_threshold_decides_flags(clf_dir):
    probs = ClassifierJudge(ClassifierConfig(path=str(clf_dir)), device="cpu").unsafe_probs(PAIRS)
    mid = sorted(probs)[len(probs) // 2]
    for threshold, expected in [(0.0, [True] * len(PAIRS)), (mid, [p >= mid for p in probs]),
                                (1.0, [p >= 1.0 for p in probs])]:
        judge = ClassifierJudge(ClassifierConfig(path=str(clf_dir), threshold=threshold), device="cpu")
        verdicts = judge.judge(PAIRS)
        assert [v["flagged"] for v in verdicts] == expected
        assert [v["unsafe_prob"] for v in verdicts] == pytest.approx(probs)
    assert 0 < sum(p >= mid for p in probs) < len(PAIRS)  # the middle threshold really splits
    s = judge.settings()
    assert s["kind"] == "sequence" and s["unsafe_labels"] == ["unsafe"] and s["threshold"] == 1.0


def test_label_mapping_choices(tmp_path, tiny_tokenizer):
    three = {0: "benign", 1: "toxic", 2: "neutral"}
    save_classifier(tmp_path / "c3", tiny_tokenizer, three)
    auto = ClassifierJudge(ClassifierConfig(path=str(tmp_path / "c3")), device="cpu")
    explicit = ClassifierJudge(ClassifierConfig(path=str(tmp_path / "c3"), unsafe_labels=("toxic", "neutral")), device="cpu")
    p_auto, p_two = auto.unsafe_probs(PAIRS), explicit.unsafe_probs(PAIRS)
    assert auto.unsafe_indices == [1] and explicit.unsafe_indices == [1, 2]
    assert all(b >= a - 1e-6 for a, b in zip(p_auto, p_two))  # more unsafe classes, more mass
    with pytest.raises(ValueError, match="not labels of this classifier"):
        ClassifierJudge(ClassifierConfig(path=str(tmp_path / "c3"), unsafe_labels=("harmful",)), device="cpu")


def test_multi_label_uses_sigmoid(tmp_path, tiny_tokenizer):
    save_classifier(tmp_path / "ml", tiny_tokenizer, {0: "hate", 1: "violence", 2: "ok"}, problem_type="multi_label_classification")
    judge = ClassifierJudge(ClassifierConfig(path=str(tmp_path / "ml"), unsafe_labels=("hate", "violence")), device="cpu")
    assert judge.multi_label
    probs = judge.unsafe_probs(PAIRS)
    assert all(0.0 <= p <= 1.0 for p in probs)


def test_resolve_unsafe_indices_rules():
    assert resolve_unsafe_indices({0: "LABEL_0", 1: "LABEL_1"}, None) == [1]
    assert resolve_unsafe_indices({0: "not_harmful", 1: "harmful"}, None) == [1]
    with pytest.raises(ValueError, match="set unsafe_labels"):
        resolve_unsafe_indices({0: "positive", 1: "negative"}, None)


def test_guard_parser_and_kind_detection():
    assert parse_guard_output("unsafe\nS1, S10", item="0") == (True, ["S1", "S10"])
    assert parse_guard_output("\n\nsafe", item="0") == (False, [])
    with pytest.raises(JudgeOutputError, match="item q7"):
        parse_guard_output("I think this is fine", item="q7")
    assert detect_kind(["LlamaForCausalLM"]) == "guard"
    with pytest.raises(ValueError, match="kind"):
        detect_kind(["BertModel"])


def test_guard_with_random_model_fails_loudly(tiny_model_dir):
    judge = ClassifierJudge(ClassifierConfig(path=str(tiny_model_dir), max_new_tokens=4), device="cpu")
    assert judge.kind == "guard"
    with pytest.raises(JudgeOutputError, match="raw text"):
        judge.judge(PAIRS[:2], ids=["a", "b"])


def test_config_validation():
    with pytest.raises(ValueError, match="path is required"):
        ClassifierConfig()
    with pytest.raises(ValueError, match="threshold"):
        ClassifierConfig(path="x", threshold=1.5)
    with pytest.raises(ValueError, match="auto, sequence, guard"):
        ClassifierConfig(path="x", kind="regex")
    with pytest.raises(ValueError, match="pair, response, chat"):
        ClassifierConfig(path="x", input_format="html")
