"""Every command shown in README.md and docs/*.md names a script and flags that exist, as written."""

import re
import shlex
from pathlib import Path

import active
import bench
import campaign
import evaluate
import experiments
import labeling
import train

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"active.py": active, "bench.py": bench, "campaign.py": campaign, "evaluate.py": evaluate}
SCRIPTS.update({"experiments.py": experiments, "labeling.py": labeling, "train.py": train})


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
                    elif command[:1] == ["python"]:
                        yield page.name, command[1], command[2:]
                        command = []


def test_every_shown_command_parses():
    shown = list(shown_commands())
    assert len(shown) >= 20 and {script for _, script, _ in shown} >= {"train.py", "active.py", "experiments.py"}
    for page, script, arguments in shown:
        assert script in SCRIPTS, f"{page}: python {script} is not one of the project's scripts"
        parser = SCRIPTS[script].build_parser()
        try:
            if script == "experiments.py":  # the grid passes the flags it does not know to active.py
                _, rest = parser.parse_known_args(arguments)
                active.build_parser().parse_args(rest)
            else:
                parser.parse_args(arguments)
        except SystemExit:
            raise AssertionError(f"{page}: `python {script} {' '.join(arguments)}` does not parse") from None
