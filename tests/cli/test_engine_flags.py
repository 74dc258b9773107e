"""The engine's flags are one definition shared by ``generate``, ``serve`` and ``train grpo``: the same values give
the same ``EngineConfig``, the defaults are ``EngineConfig``'s, and nonsense is a usage error in all three."""

import pytest

from echo.cli import build_parser
from echo.config import EngineConfig, RelistenPolicy
from echo.engine_flags import engine_config

COMMANDS = {
    "generate": ["generate", "clip.wav", "what is heard?", "--model", "m"],
    "serve": ["serve", "--model", "m"],
    "train grpo": ["train", "grpo", "--model", "m", "--data", "d.jsonl", "--out", "o"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_the_same_flags_give_the_same_engine_config(command):
    args = build_parser().parse_args(COMMANDS[command] + [
        "--max-relistens", "3", "--max-num-seqs", "5", "--max-model-len", "4096", "--kv-cache-gb", "0.5",
        "--enforce-eager"])
    assert engine_config(args) == EngineConfig(max_num_seqs=5, max_model_len=4096, kv_cache_bytes=1 << 29,
                                               relisten=RelistenPolicy(max_turns=3), enforce_eager=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_defaults_are_engine_configs(command):
    config = engine_config(build_parser().parse_args(COMMANDS[command]))
    # GRPO's rollout engine keeps 1 GiB of KV beside the trainer's memory; the others take EngineConfig's 2 GiB
    kv = 1 << 30 if command == "train grpo" else EngineConfig().kv_cache_bytes
    assert config == EngineConfig(kv_cache_bytes=kv)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag,value", [("--max-num-seqs", "0"), ("--max-relistens", "-1"),
                                        ("--kv-cache-gb", "nan"), ("--max-model-len", "2.5")])
def test_nonsense_is_a_usage_error(command, flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(COMMANDS[command] + [flag, value])
    assert exit_.value.code == 2
    assert flag in capsys.readouterr().err
