"""Records, loaders, chat templating and the bundled data sets. See :mod:`.records` for the format."""

from .records import DataError, Record, read_records, write_jsonl
from .sources import available_sources, load_source
from .templating import IGNORE_INDEX, SFTCollator, encode_pair, encode_prompt, pad_batch, prompt_text
from .text import finish_at_sentence

__all__ = [
    "DataError", "Record", "read_records", "write_jsonl", "available_sources", "load_source",
    "IGNORE_INDEX", "SFTCollator", "encode_pair", "encode_prompt", "pad_batch", "prompt_text", "finish_at_sentence",
]
