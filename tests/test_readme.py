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
