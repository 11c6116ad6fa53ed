"""One CLI vocabulary: the gpsk subcommands spell each concept the same way; old spellings are hidden, warning
aliases."""

from __future__ import annotations

import argparse

import pytest

from gpsk_materials.checks.post import DEFAULT_CHECKS, parse_checks
from gpsk_materials.cli import build_parser
from gpsk_materials.cli_options import OPTIONS
from gpsk_materials.defaults import RELAX_STEPS, SAMPLER_STEPS


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _visible(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def test_each_option_means_one_thing_in_every_subcommand():
    subs = _subparsers()
    assert {"generate", "check", "evaluate", "train"} <= set(subs)
    for name, (flags, _) in OPTIONS.items():
        for cmd, p in subs.items():
            actions = _visible(p)
            for flag in flags:
                if flag in actions:
                    assert actions[flag].dest == name, (cmd, flag, actions[flag].dest)
    # --steps is the sampler's everywhere it is shown; relaxation steps are --relax-steps
    for cmd, p in subs.items():
        actions = _visible(p)
        if "--steps" in actions:
            assert cmd in ("generate", "solve") and actions["--steps"].default == SAMPLER_STEPS
    for cmd in ("check", "evaluate"):
        assert "--relax-steps" in _visible(subs[cmd]) and "--no-progress" in _visible(subs[cmd])
        assert "--hull" in _visible(subs[cmd])
    assert "--hull" in _visible(subs["generate"]) and "--no-progress" in _visible(subs["train"])
    assert _visible(subs["generate"])["-n"] is _visible(subs["generate"])["--n"]


def test_old_spellings_are_hidden_aliases_that_warn(capsys):
    parser = build_parser()
    args = parser.parse_args(["check", "a.cif", "--steps", "7"])
    assert args.relax_steps == 7
    assert "--steps is deprecated, use --relax-steps" in capsys.readouterr().err
    assert parser.parse_args(["check", "a.cif"]).relax_steps == RELAX_STEPS
    args = parser.parse_args(["evaluate", "x.json", "--quiet"])
    assert args.no_progress is True
    assert "--quiet is deprecated, use --no-progress" in capsys.readouterr().err
    assert parser.parse_args(["evaluate", "x.json"]).no_progress is False
    help_text = _subparsers()["evaluate"].format_help()
    assert "--quiet" not in help_text and "--no-progress" in help_text


def test_hull_means_the_same_in_check_evaluate_and_generate():
    parser = build_parser()
    for argv in (["check", "a.cif"], ["evaluate", "x.json"], ["generate", "NaCl"]):
        assert parser.parse_args(argv).hull is None
        assert parser.parse_args([*argv, "--hull"]).hull == "self"
    assert parser.parse_args(["evaluate", "x.json", "--hull", "both"]).hull == "both"
    with pytest.raises(SystemExit):  # check and generate have one hull: the potential's own
        parser.parse_args(["check", "a.cif", "--hull", "mp-dft"])


def test_checks_preset_says_what_it_runs():
    assert DEFAULT_CHECKS == "validity_symmetry"
    assert parse_checks("basic") == parse_checks(DEFAULT_CHECKS) == parse_checks(None) == {DEFAULT_CHECKS}
    assert parse_checks("basic,relax") == {DEFAULT_CHECKS, "energy", "relax"}
    assert build_parser().parse_args(["generate", "NaCl"]).checks == DEFAULT_CHECKS


def test_solve_speaks_the_same_vocabulary():
    """gpsk solve takes its shared options from cli_options: the default checks are named as in generate, and the
    sampler, seed, model and output options mean what they mean everywhere."""
    parser = build_parser()
    args = parser.parse_args(["solve", "p.xy", "--composition", "NaCl"])
    assert args.checks == DEFAULT_CHECKS and args.steps == SAMPLER_STEPS and args.n == 5 and args.best_of == 4
    assert str(args.out) == "solved" and args.no_progress is False
    args = parser.parse_args(["solve", "p.xy", "--composition", "NaCl", "--n", "2", "--crystal-system", "cubic"])
    assert args.n == 2 and args.crystal_system == "cubic"
    solve, generate = _visible(_subparsers()["solve"]), _visible(_subparsers()["generate"])
    for flag in ("--guidance", "--steps", "--seed", "--checks", "--best-of", "--crystal-system", "--space-group",
                 "--model", "--device", "--out", "--no-progress", "-n"):
        assert solve[flag].dest == generate[flag].dest and solve[flag].type == generate[flag].type, flag
