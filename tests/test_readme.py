from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    install_and_run, install_and_test = [line for line in block.splitlines() if line.strip()]
    assert install_and_run.startswith("pip install -e . && python study/run.py --space taskE")
    assert "pytest" in install_and_test
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install_and_test in ci



def test_every_flag_of_every_script_is_in_the_readme(monkeypatch):
    """`--help` and the README's flag section cannot drift apart."""
    import contextlib
    import io
    import re
    import runpy

    section = (ROOT / "README.md").read_text().split("## Every CLI flag", 1)[1].split("\n## ", 1)[0]
    missing = {}
    for script in sorted((ROOT / "study").glob("*.py")):
        # In this process, so the scripts' imports (torch, ray) load once, not once per script.
        monkeypatch.setattr("sys.argv", [str(script), "--help"])
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            runpy.run_path(str(script), run_name="__main__")
        # argparse lists each option at two spaces: "  --flag X, --other" then its help
        flags = {f for line in re.findall(r"^  (-.*?)(?:  |$)", out.getvalue(), re.M)
                 for f in re.findall(r"--[\w-]+", line)} - {"--help"}
        assert flags, f"{script.name}: no flags parsed from --help"
        missing[script.name] = sorted(f for f in flags if f"`{f}" not in section and f"{f}`" not in section)
    assert not any(missing.values()), f"flags missing from the README's 'Every CLI flag': {missing}"
