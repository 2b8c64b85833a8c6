"""The workshop: everything the paper does not have, one job a file, beside the paper's six files.

The paper's files (data.py, wavelets.py, model.py, train.py, active.py, evaluate.py) call these only at their edges:
loading cells, splitting them, writing checkpoints and run folders, the command line. Commands run from the
repository root, e.g. `python -m lab.campaign status CAMPAIGN` (README.md lists each once).
"""
