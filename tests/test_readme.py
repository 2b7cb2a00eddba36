"""The README's commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(section):
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", body, re.S)


def test_ci_runs_the_readme_test_command():
    (command,) = _commands("Run the tests")
    assert command.strip() in (ROOT / ".ci" / "run").read_text()


def test_quickstart_runs_the_example_that_exists():
    (command,) = _commands("Quickstart")
    script = re.search(r"python (\S+\.py)", command).group(1)
    assert (ROOT / script).is_file()
