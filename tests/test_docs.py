"""Every command shown in README.md and docs/*.md names a script and flags that exist, as written."""

import json
import re
import shlex
from pathlib import Path

import active
import evaluate
import train
from lab import bench, campaign, ceiling, experiments, labeling

ROOT = Path(__file__).resolve().parent.parent
# The paper's scripts run as `python SCRIPT.py`, the workshop's as `python -m lab.NAME` from the repository root.
SCRIPTS = {"train.py": train, "active.py": active, "evaluate.py": evaluate}
SCRIPTS.update({"-m lab.bench": bench, "-m lab.campaign": campaign, "-m lab.experiments": experiments})
SCRIPTS.update({"-m lab.labeling": labeling, "-m lab.ceiling": ceiling})


def shown_commands():
    """(page, script, arguments) of every `python SCRIPT ...` line of a bash block, shell variables expanded."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            variables = {}
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if len(words) == 1 and re.fullmatch(r"[A-Z]+=.*", words[0]):
                    name, value = words[0].split("=", 1)
                    variables[name] = shlex.split(value)
                    continue
                expanded = [part for word in words for part in variables.get(word[1:], [word])]
                command: list[str] = []
                for word in expanded + ["&&"]:
                    if word != "&&":
                        command.append(word)
                    elif command[:2] == ["python", "-m"]:
                        yield page.name, f"-m {command[2]}", command[3:]
                        command = []
                    elif command[:1] == ["python"]:
                        yield page.name, command[1], command[2:]
                        command = []


def test_every_shown_command_parses():
    shown = list(shown_commands())
    assert len(shown) >= 20 and {script for _, script, _ in shown} >= {"train.py", "active.py", "-m lab.experiments"}
    for page, script, arguments in shown:
        assert script in SCRIPTS, f"{page}: python {script} is not one of the project's scripts"
        parser = SCRIPTS[script].build_parser()
        try:
            if script == "-m lab.experiments":  # the grid passes the flags it does not know to active.py
                _, rest = parser.parse_known_args(arguments)
                active.build_parser().parse_args(rest)
            else:
                parser.parse_args(arguments)
        except SystemExit:
            raise AssertionError(f"{page}: `python {script} {' '.join(arguments)}` does not parse") from None


def test_the_readme_smoke_run_runs_as_written(tmp_path, monkeypatch):
    """The README's short commands (the smoke run of the whole chain) run as written, from a fresh folder."""
    smoke = [(script, arguments) for page, script, arguments in shown_commands()
             if page == "README.md" and "runs/smoke/pretrained.pt" in arguments]
    assert [script for script, _ in smoke] == ["train.py", "active.py"]
    monkeypatch.chdir(tmp_path)
    for script, arguments in smoke:
        SCRIPTS[script].main(arguments + ["--device", "cpu"])
    results = json.loads((tmp_path / "runs" / "smoke" / "in-al" / "results.json").read_text())
    assert results["case"] == "in-al" and results["labeled"] == round(0.2 * results["pool"])
