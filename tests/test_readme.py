from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    install_and_run, install_and_test = [line for line in block.splitlines() if line.strip()]
    assert install_and_run.startswith("pip install -e . && tlstudy run --space taskE")
    assert "pytest" in install_and_test
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install_and_test in ci


def test_every_flag_of_every_command_is_in_the_readme(monkeypatch):
    """`--help` and the README's flag section cannot drift apart."""
    import contextlib
    import io
    import re
    import runpy

    from tlstudy.cli import parsers as cli_flags

    section = (ROOT / "README.md").read_text().split("## Every CLI flag", 1)[1].split("\n## ", 1)[0]
    documented = lambda f: f"`{f}" in section or f"{f}`" in section  # noqa: E731
    missing = {}
    for name in cli_flags.COMMANDS:
        assert f"**`tlstudy {name}`**" in section, name
        flags = {s for a in cli_flags.subparser(name)._actions for s in a.option_strings if s.startswith("--")} - {
            "--help"
        }
        missing[f"tlstudy {name}"] = sorted(f for f in flags if not documented(f))
    # The scripts that are no tlstudy command (study/screenshot.py), from their --help.
    wrappers = {f"{name}.py" for name in cli_flags.COMMANDS}
    for script in sorted(p for p in (ROOT / "study").glob("*.py") if p.name not in wrappers):
        monkeypatch.setattr("sys.argv", [str(script), "--help"])
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            runpy.run_path(str(script), run_name="__main__")
        # argparse lists each option at two spaces: "  --flag X, --other" then its help
        flags = {
            f for line in re.findall(r"^  (-.*?)(?:  |$)", out.getvalue(), re.M) for f in re.findall(r"--[\w-]+", line)
        } - {"--help"}
        assert flags, f"{script.name}: no flags parsed from --help"
        missing[script.name] = sorted(f for f in flags if not documented(f))
    assert not any(missing.values()), f"flags missing from the README's 'Every CLI flag': {missing}"


def test_the_scripts_in_study_are_the_commands():
    for name in ("run", "trial", "analyze", "dashboard", "submit"):
        text = (ROOT / "study" / f"{name}.py").read_text()
        assert f'cli.main(["{name}", *sys.argv[1:]])' in text, name
