"""One spelling per concept across every subcommand (cli_vocabulary.py): no parser shows a second spelling, the
shared flags have one default everywhere, the old spellings still work for a release with a warning, and
``echo --help`` lists every command under its area."""

import argparse

import pytest

from echo.cli import AREAS, build_parser, main
from echo.cli_vocabulary import DEPRECATED, SPELLINGS, add_deprecated_spellings

# flags several commands share: each has one default wherever it appears, except where a command's own config
# decides it for a reason of its own (listed here with the reason)
SHARED = ("--temperature", "--top-p", "--top-k", "--max-new-tokens", "--seed", "--max-relistens", "--max-num-seqs",
          "--max-model-len", "--kv-cache-gb", "--enforce-eager", "--device", "--dtype", "--overwrite")
OWN_DEFAULTS = {
    ("train grpo", "--temperature"): "rollouts must sample: a greedy group has no spread to learn from",
    ("train grpo", "--kv-cache-gb"): "the rollout engine shares the memory with the trainer's model and optimizer",
    **{(f"data {c}", "--max-new-tokens"): "the remote captioning/QA model's completion budget, not echo's engine"
       for c in ("pipeline", "caption", "synthesize", "filter")},
}


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for every parser under ``parser``, itself included."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


def visible_options(parser: argparse.ArgumentParser):
    return [(option, action) for action in parser._actions if action.help != argparse.SUPPRESS
            for option in action.option_strings]


def second_spellings(parser: argparse.ArgumentParser) -> list[str]:
    """``command: option`` for every option a user sees that spells a known concept another way."""
    others = {old: new for new, olds in SPELLINGS.items() for old in olds}
    found = []
    for command, p in commands(parser):
        for option, _ in visible_options(p):
            if option in others:
                found.append(f"{command}: {option} (use {others[option]})")
    return found


def test_no_command_shows_a_second_spelling():
    assert second_spellings(build_parser()) == []


def test_the_check_finds_a_planted_second_spelling():
    parser = argparse.ArgumentParser(prog="echo")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("a").add_argument("--max-new-tokens")
    sub.add_parser("b").add_argument("--max-tokens")
    sub.add_parser("c").add_argument("--output")
    assert second_spellings(parser) == ["b: --max-tokens (use --max-new-tokens)", "c: --output (use --out)"]


def test_shared_flags_have_one_default_everywhere():
    defaults: dict[str, dict[str, object]] = {flag: {} for flag in SHARED}
    for command, p in commands(build_parser()):
        for option, action in visible_options(p):
            if option in defaults and (command, option) not in OWN_DEFAULTS:
                defaults[option][command] = action.default
    for flag, by_command in defaults.items():
        assert len(by_command) >= 2, f"{flag} is no longer shared; drop it from SHARED"
        assert len({repr(v) for v in by_command.values()}) == 1, f"{flag} has several defaults: {by_command}"


def test_every_exception_is_still_a_real_flag():
    """A stale OWN_DEFAULTS entry would hide nothing and say something false."""
    seen = {(c, o) for c, p in commands(build_parser()) for o, _ in visible_options(p)}
    assert set(OWN_DEFAULTS) <= seen


@pytest.mark.parametrize("command,argv,old,new", [
    ("eval", ["eval", "--benchmark", "mmar", "--model", "m"], ["--max-tokens", "7"], ["--max-new-tokens", "7"]),
    ("eval", ["eval", "--benchmark", "mmar", "--model", "m"], ["--relisten-turns", "0"], ["--max-relistens", "0"]),
    ("serve", ["serve", "--model", "m"], ["--max-tokens", "6"], ["--max-new-tokens", "6"]),
    ("generate", ["generate", "--model", "m", "--input", "r.jsonl"], ["--output", "o.jsonl"], ["--out", "o.jsonl"]),
    ("make-tiny", ["make-tiny", "d"], ["--force"], ["--overwrite"]),
    ("convert gguf", ["convert", "gguf", "m.gguf", "d"], ["--force"], ["--overwrite"]),
    ("data caption", ["data", "caption", "--out", "o", "--audio", "a"], ["--max-tokens", "12"],
     ["--max-new-tokens", "12"]),
])
def test_an_old_spelling_still_works_and_warns(command, argv, old, new, capsys):
    expected = build_parser().parse_args(argv + new)
    assert capsys.readouterr().err == ""
    got = build_parser().parse_args(argv + old)
    assert vars(got) == vars(expected)
    assert capsys.readouterr().err == (f"echo {command}: warning: {old[0]} is deprecated and will be removed in "
                                       f"the next release; use {new[0]}\n")
    assert DEPRECATED[old[0]] == new[0]


def test_old_spellings_are_not_in_any_help(capsys):
    for command, p in commands(build_parser()):
        text = p.format_help()
        for old in DEPRECATED:
            assert f"{old} " not in text and f"{old}\n" not in text and f"{old}," not in text, (command, old)


def test_aliases_go_only_where_the_new_spelling_is():
    parser = argparse.ArgumentParser(prog="echo")
    parser.add_argument("--out")
    add_deprecated_spellings(parser)
    options = parser._option_string_actions
    assert "--output" in options and "--force" not in options and "--max-tokens" not in options


def test_help_lists_every_command_by_area(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    registered = [a.dest for a in build_parser()._subparsers._group_actions[0]._choices_actions]
    placed = [name for names in AREAS.values() for name in names]
    assert sorted(placed) == sorted(registered)  # each command in exactly one area
    lines = text.splitlines()
    for area, names in AREAS.items():
        start = lines.index(f"  {area}:")
        assert [line.split()[0] for line in lines[start + 1: start + 1 + len(names)]] == list(names)
