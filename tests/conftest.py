"""Shared fixtures: the scripts are flat top-level files, so the project root goes on sys.path."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
I3A = ROOT.parent / "shared" / "data" / "i3a"

# Tiny settings that keep every end-to-end test to seconds on 2 CPU cores. HEP2_TEST_DEVICE=cuda runs the
# scripts' end-to-end tests on a GPU instead (docs/speed.md, the GPU check); the default is the CPU.
TINY = ["--image-size", "32", "--device", os.environ.get("HEP2_TEST_DEVICE", "cpu")]


def fails(main, argv, *words):
    """main(argv) exits with one line that starts with 'error: ' and holds every word (no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    text = str(exit_info.value)
    assert text.startswith("error: ") and "\n" not in text, text
    assert all(word in text for word in words), text
    return text


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """A tiny pretrained checkpoint made by train.py itself on the synthetic source."""
    import train

    out = tmp_path_factory.mktemp("pretrain") / "pretrained.pt"
    train.main(TINY + ["--synthetic-cells", "60", "--max-epochs", "2", "--rotations", "2", "--out", str(out)])
    return out


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Keep the preprocessed-data cache of every test out of the user's ~/.cache."""
    monkeypatch.setenv("HEP2_CACHE", str(tmp_path_factory.getbasetemp() / "hep2-cache"))


@pytest.fixture()
def server(tmp_path, pretrained):
    """A labeling campaign and its page's server on a free port (tests/test_labeling.py): (folder, truth, port,
    labeling)."""
    from test_labeling import serve_in_background, start

    folder, truth = start(tmp_path, pretrained)
    http_server, state = serve_in_background(folder)
    yield folder, truth, http_server.server_address[1], state
    http_server.shutdown()
