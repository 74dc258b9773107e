"""Evaluation on MMAR, MMAU and echo's synthetic tasks, scored exactly as the official scripts score them."""

from ..answers import Extraction, extract_answer, string_match
from ..protocol import ECHO_PROMPT, build_prompt
from .datasets import BENCHMARK_NAMES, Benchmark, BenchmarkError, EvalItem, check_audio, load_benchmark
from .prompts import build_messages
from .runner import EvalRequest, RunConfig, RunReport, SupportsGenerate, merge_and_score, run_eval
from .scoring import Score, score_records

__all__ = [
    "BENCHMARK_NAMES", "ECHO_PROMPT", "Benchmark", "BenchmarkError", "EvalItem", "EvalRequest", "Extraction",
    "RunConfig", "RunReport", "Score", "SupportsGenerate", "build_messages", "build_prompt", "check_audio",
    "extract_answer", "load_benchmark", "merge_and_score", "run_eval", "score_records", "string_match",
]
