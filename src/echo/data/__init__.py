"""Data: synthetic audio tasks with exact answers, and the EAQA JSONL format they are written in."""

from .formats import DataFormatError, EAQARecord, check_record, parse_cot, read_eaqa, write_eaqa
from .item import QuestionItem

__all__ = ["DataFormatError", "EAQARecord", "QuestionItem", "check_record", "parse_cot", "read_eaqa", "write_eaqa"]
