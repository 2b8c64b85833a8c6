"""Every command shown in README.md and docs/*.md names a script and flags that exist, as written; the README's
Table 2 is computed from its committed CSVs."""

import csv
import json
import re
import shlex
import statistics
from pathlib import Path

import pytest

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


def test_every_help_reads_as_written():
    """argparse formats help strings with %: a bare one ("100% runs") prints a dict of the option instead."""
    for script, module in SCRIPTS.items():
        text = module.build_parser().format_help()
        assert "option_strings" not in text and "%(" not in text, f"python {script} --help"


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


# The README's Table 2: which committed per-run CSV each measured column is computed from, and whether from the
# pooled rows of specimen folds (True) or from one run a seed (False).
TABLE_2_SOURCES = {
    2: ("docs/i3a-table2/paper-cells/results.csv", False),
    3: ("docs/i3a-table2/defaults-cells/results.csv", False),
    4: ("docs/i3a-table2/paper-folds/results.csv", True),
    5: ("docs/i3a-cv/results.csv", True),
}


def table_2_cell(rows: list[dict]) -> list[float]:
    """MCA and ACA in % as the README writes them: the mean (and the std, with several seeds) of the runs."""
    numbers = []
    for metric in ("mca", "aca"):
        values = [100 * float(row[metric]) for row in rows]
        numbers += [statistics.mean(values)] + ([statistics.stdev(values)] if len(values) > 1 else [])
    return numbers


def test_the_readme_table_2_is_its_csvs():
    """Each measured cell of the README's Table 2 is the mean ± std over seeds of its committed per-run CSV (the
    folds' pooled rows); a cell not measured says so and holds no number."""
    section = (ROOT / "README.md").read_text().split("### The paper's Table 2 side by side")[1].split("###")[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if re.match(r"\| (IN-)?(RS|AL) ", line)]
    assert [row[0].split()[0] for row in rows] == ["RS", "AL", "IN-RS", "IN-AL"]
    checked = 0
    for row in rows:
        case = row[0].split()[0].lower()
        for column, (source, pooled) in TABLE_2_SOURCES.items():
            shown = [float(number) for number in re.findall(r"\d+\.\d+", row[column])]
            if not shown:
                assert "not run" in row[column], f"README Table 2, {case}, column {column}: no number, not 'not run'"
                continue
            runs = [r for r in csv.DictReader((ROOT / source).open()) if r["case"] == case and float(r["limit"]) == 0.2]
            expected = table_2_cell([r for r in runs if (r["fold"] == "pooled") == pooled])
            # 0.011: the CSV's 4-decimal fractions move a mean by up to 0.005 points, the README's 2 decimals 0.005 more
            assert shown == pytest.approx(expected, abs=0.011), f"README Table 2, {case}, column {column}: {source}"
            checked += 1
    assert checked >= 8


def test_the_issue_61_runs_in_the_docs_are_their_csvs():
    """Each row of docs/results-i3a.md's #61 table (case, fold, MCA, ACA, stop, CSV) is the row of its committed CSV."""
    page = (ROOT / "docs" / "results-i3a.md").read_text()
    section = page.split("## Random sampling in AL's loop")[1].split("\n## ")[0]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in section.splitlines() if "| `docs/" in line]
    assert rows, "the #61 section holds no row read from a CSV"
    for case, fold, mca, aca, stopped, source in rows:
        runs = [r for r in csv.DictReader((ROOT / source.strip("`")).open())
                if r["case"] == case.lower() and r["fold"] == ("" if fold == "cells" else fold)]  # fmt: skip
        assert len(runs) == 1, f"{source}: {case} {fold}"
        expected = [100 * float(runs[0]["mca"]), 100 * float(runs[0]["aca"])]
        assert [float(mca), float(aca)] == pytest.approx(expected, abs=0.006), f"{source}: {case} {fold}"
        assert stopped == runs[0]["stopped_on"], f"{source}: {case} {fold} stopped on {runs[0]['stopped_on']}"
