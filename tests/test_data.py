"""Record format, loaders (good and bad files), templating and response masks."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from safeanchor.data import DataError, IGNORE_INDEX, Record, SFTCollator, encode_pair, load_source, read_records
from safeanchor.data.templating import pad_batch, prompt_ids


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ---------------------------------------------------------------- readers: good files


def test_jsonl_prompt_response_and_messages(tmp_path):
    p = write(tmp_path, "d.jsonl",
              '{"prompt": "Hi", "response": "Hello"}\n\n'
              '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},'
              ' {"role": "assistant", "content": "4"}], "id": 7, "source": "x"}\n')
    recs = read_records(p, require_response=True)
    assert [(r.prompt, r.response, r.system) for r in recs] == [("Hi", "Hello", None), ("2+2?", "4", "Be brief.")]
    assert recs[1].id == "7" and recs[1].meta == {"source": "x"}
    assert recs[1].messages()[0] == {"role": "system", "content": "Be brief."}


def test_json_csv_parquet_and_column_mapping(tmp_path):
    rows = [{"instruction": "Name a fruit", "output": "Apple"}, {"instruction": "Name a colour", "output": "Red"}]
    pj = write(tmp_path, "d.json", json.dumps({"data": rows}))
    pc = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(pc, index=False)
    pq = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    cols = {"prompt": "instruction", "response": "output"}
    for p in (pj, pc, pq):
        recs = read_records(p, columns=cols, require_response=True)
        assert [(r.prompt, r.response) for r in recs] == [("Name a fruit", "Apple"), ("Name a colour", "Red")], p


def test_hf_dataset_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"prompt": "a", "response": "b"}]).save_to_disk(str(tmp_path / "ds"))
    recs = load_source(f"file:{tmp_path / 'ds'}", require_response=True)
    assert [(r.prompt, r.response) for r in recs] == [("a", "b")]


# ---------------------------------------------------------------- readers: bad files name file, line, field


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("bad.jsonl", '{"prompt": "ok", "response": "fine"}\n{"prompt": "broken"\n', "bad.jsonl:2: malformed JSON"),
        ("miss.jsonl", '{"prompt": "ok", "response": "x"}\n{"response": "no prompt"}\n', "miss.jsonl:2: field 'prompt' is missing"),
        ("empty.jsonl", '{"prompt": "ok", "response": "   "}\n', "empty.jsonl:1: field 'response' is empty"),
        ("type.jsonl", '{"prompt": 3, "response": "x"}\n', "type.jsonl:1: field 'prompt' must be a string"),
        ("nores.jsonl", '{"prompt": "ok"}\n', "nores.jsonl:1: field 'response' is missing"),
        ("chat.jsonl", '{"messages": [{"role": "assistant", "content": "x"}]}\n', "chat.jsonl:1: field 'messages' must start"),
        ("cols.csv", 'prompt,response\n"a","b"\n"c","d","e"\n', "cols.csv:3: expected 2 columns"),
        ("emptycsv.csv", 'prompt,response\n"a",\n', "emptycsv.csv:2: field 'response' is missing"),
        ("bad.json", '[{"prompt": "a", "response": "b"},\n {"prompt": }]', "bad.json:2: malformed JSON"),
    ],
)
def test_bad_input_names_file_line_field(tmp_path, name, text, needle):
    p = write(tmp_path, name, text)
    with pytest.raises(DataError) as e:
        read_records(p, require_response=True)
    assert needle in str(e.value)


def test_unknown_source_and_file_type(tmp_path):
    with pytest.raises(DataError, match="unknown data source 'nope:x'"):
        load_source("nope:x")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_source(f"file:{write(tmp_path, 'x.txt', 'hi')}")
    with pytest.raises(DataError, match="file not found"):
        load_source(f"file:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(DataError, match="unknown bundled set 'nothing'"):
        load_source("bundled:nothing")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_source("bundled:harmful:dev")


def test_wheel_sources_standard_only_by_default():
    hb = load_source("harmbench")
    assert len(hb) == 200 and all(r.meta["FunctionalCategory"] == "standard" for r in hb)
    assert len(load_source("harmbench", functional="all")) == 400
    assert len(load_source("harmbench:val")) + len(load_source("harmbench:test")) == 200
    sr = load_source("strongreject")
    assert len(sr) == 313 and all(r.prompt.strip() for r in sr)
    assert len(load_source("strongreject:small")) == 60


def test_limit_is_a_prefix():
    full = load_source("strongreject")
    assert [r.prompt for r in load_source("strongreject", limit=5)] == [r.prompt for r in full[:5]]


# ---------------------------------------------------------------- templating and masks


def test_response_only_mask(tiny_tokenizer):
    rec = Record("What is 12 plus 7?", "The answer is 19.")
    enc = encode_pair(tiny_tokenizer, rec, max_length=256)
    p = prompt_ids(tiny_tokenizer, rec)
    assert enc.input_ids[: len(p)] == p and enc.prompt_len == len(p)
    assert all(x == IGNORE_INDEX for x in enc.labels[: enc.prompt_len])
    resp = tiny_tokenizer.decode(enc.input_ids[enc.prompt_len:])
    assert resp.startswith("The answer is 19.") and "<|im_end|>" in resp  # learns to stop
    assert enc.labels[enc.prompt_len:] == enc.input_ids[enc.prompt_len:]
    assert not enc.truncated


def test_truncation_never_drops_the_response(tiny_tokenizer):
    rec = Record("word " * 200, "a long answer " * 50)
    enc = encode_pair(tiny_tokenizer, rec, max_length=64, min_response_tokens=16)
    n_resp = sum(x != IGNORE_INDEX for x in enc.labels)
    assert len(enc.input_ids) == 64 and enc.truncated and n_resp >= 16
    with pytest.raises(DataError, match="too small"):
        encode_pair(tiny_tokenizer, rec, max_length=10, min_response_tokens=16)


def test_collator_pads_both_sides(tiny_tokenizer):
    feats = []
    for i, (q, a) in enumerate([("Hi", "Hello there"), ("A much longer question here", "Ok")]):
        e = encode_pair(tiny_tokenizer, Record(q, a), max_length=128)
        feats.append({"input_ids": e.input_ids, "labels": e.labels, "sample_idx": i})
    for side in ("left", "right"):
        b = SFTCollator(tiny_tokenizer.pad_token_id, side)(feats)
        assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape
        assert b["sample_idx"].tolist() == [0, 1]
        for i, f in enumerate(feats):
            keep = b["attention_mask"][i].bool()
            assert b["input_ids"][i][keep].tolist() == f["input_ids"]
            assert (b["labels"][i][~keep] == IGNORE_INDEX).all()
    ids, mask = pad_batch([[1, 2], [3]], 0, side="left")
    assert ids.tolist() == [[1, 2], [0, 3]] and mask.tolist() == [[1, 1], [0, 1]]


def test_bundled_sets_load_with_splits():
    harmful = load_source("bundled:harmful")
    assert len(harmful) >= 300
    by_split = {s: load_source(f"bundled:harmful:{s}") for s in ("train", "val", "test")}
    assert sum(len(v) for v in by_split.values()) == len(harmful)
    assert all(r.meta["split"] == s for s, rs in by_split.items() for r in rs)
    refusals = load_source("bundled:refusals")
    assert len(refusals) >= 40 and all(r.response and r.prompt == "" for r in refusals)
