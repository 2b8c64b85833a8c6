"""The labeling page (lab/labeling.py, `python -m lab.labeling CAMPAIGN`): its requests through the standard library's HTTP client,
the same campaign done from the page and from the CSVs, and one test in a real browser (Chromium via Playwright)."""

import csv
import http.client
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
from lab import campaign, labeling, synthetic


def make_pool(folder: Path, count: int, seed: int = 11) -> dict:
    folder.mkdir()
    rng, truth = np.random.default_rng(seed), {}
    for index in range(count):
        name = data.TARGET_CLASSES[index % 6]
        Image.fromarray((synthetic.synthetic_cell(name, rng) * 255).astype(np.uint8)).save(folder / f"c{index:03d}.png")
        truth[f"c{index:03d}.png"] = name
    return truth


def start(tmp_path, pretrained, name="campaign", n=6, pool="pool", count=24):
    truth = make_pool(tmp_path / pool, count) if not (tmp_path / pool).exists() else None
    folder = tmp_path / name
    flags = ["query", "--pool", str(tmp_path / pool), "--checkpoint", str(pretrained), "--n", str(n)]
    campaign.main(flags + ["--out", str(folder), "--max-epochs", "1", "--device", "cpu", "--holdout", "0.2"])
    return folder, truth


def serve_in_background(folder):
    """The page's server for this campaign on a free port, in a thread: (server, labeling)."""
    held, ready = {}, threading.Event()
    thread = threading.Thread(
        target=labeling.serve,
        args=(folder, 0, "cpu", lambda server, state: held.update(server=server, labeling=state) or ready.set()),
        daemon=True,
    )
    thread.start()
    assert ready.wait(30)
    return held["server"], held["labeling"]


def request(port, method, path, body=None, token=None, host=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Host": host or f"127.0.0.1:{port}", "Content-Type": "application/json"}
    if token is not None:
        headers["X-Token"] = token
    connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    kind = response.getheader("Content-Type", "")
    return response.status, (json.loads(payload) if kind.startswith("application/json") else payload)


def query_labels(folder: Path, round_index: int) -> dict:
    return {row["file"]: row["label"] for row in csv.DictReader((folder / f"round-{round_index:03d}.csv").open())}


def test_label_skip_undo_and_the_csv_is_the_page(server):
    folder, truth, port, state = server
    status, view = request(port, "GET", "/api/state")
    assert status == 200 and view["round"] == 0 and len(view["cells"]) == 6 and view["labeled"] == 0
    first, second = view["cells"][0]["file"], view["cells"][1]["file"]
    assert request(port, "POST", "/api/label", {"number": 1, "label": truth[first]}, state.token)[0] == 200
    assert request(port, "POST", "/api/label", {"number": 2, "label": "skip"}, state.token)[0] == 200
    labels = query_labels(folder, 0)
    assert labels[first] == truth[first] and labels[second] == "skip"  # saved in the CSV as given
    assert request(port, "POST", "/api/label", {"number": 2, "label": ""}, state.token)[0] == 200  # undo
    assert query_labels(folder, 0)[second] == "" and request(port, "GET", "/api/state")[1]["labeled"] == 1
    # a spreadsheet's edit of another row is kept by the next label from the page
    rows = list(csv.DictReader((folder / "round-000.csv").open()))
    rows[3]["label"] = "golgi"
    with (folder / "round-000.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    request(port, "POST", "/api/label", {"number": 5, "label": "Homogeneous"}, state.token)
    labels = query_labels(folder, 0)
    assert labels[rows[3]["file"]] == "golgi" and labels[view["cells"][4]["file"]] == "homogeneous"
    status, answer = request(port, "POST", "/api/label", {"number": 1, "label": "mitochondria"}, state.token)
    assert status == 409 and "expected one of" in answer["error"]
    status, png = request(port, "GET", "/cell/1")
    assert status == 200 and png[:4] == b"\x89PNG"
    status, page = request(port, "GET", "/")
    assert status == 200 and state.token.encode() in page


def test_tokens_hosts_and_paths_are_refused(server):
    folder, truth, port, state = server
    before = (folder / "round-000.csv").read_bytes()
    for token in (None, "wrong"):
        status, answer = request(port, "POST", "/api/label", {"number": 1, "label": "golgi"}, token)
        assert status == 403 and "token" in answer["error"]
        assert request(port, "POST", "/api/next", {}, token)[0] == 403
    assert request(port, "GET", "/api/state", host="attacker.example:80")[0] == 403  # DNS rebinding
    for path in ("/cell/../../campaign.json", "/cell/0", "/cell/99", "/campaign.json", "/../pool/c000.png"):
        status, _ = request(port, "GET", path)
        assert status == 404, path
    status, _ = request(port, "POST", "/api/label", {"file": "../campaign.json", "label": "golgi"}, state.token)
    assert status == 400 and (folder / "round-000.csv").read_bytes() == before


def test_two_concurrent_labels_are_both_kept(server):
    folder, truth, port, state = server
    view = request(port, "GET", "/api/state")[1]
    threads = [
        threading.Thread(
            target=request, args=(port, "POST", "/api/label", {"number": n, "label": truth[c["file"]]}, state.token)
        )
        for n, c in enumerate(view["cells"], start=1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    labels = query_labels(folder, 0)
    assert all(labels[c["file"]] == truth[c["file"]] for c in view["cells"])


def test_the_next_round_from_the_page_and_a_second_start_refused(server):
    folder, truth, port, state = server
    for number, cell in enumerate(request(port, "GET", "/api/state")[1]["cells"], start=1):
        request(port, "POST", "/api/label", {"number": number, "label": truth[cell["file"]]}, state.token)
    assert request(port, "POST", "/api/next", {}, state.token)[0] == 202
    second = request(port, "POST", "/api/next", {}, state.token)
    assert second[0] == 409 or not request(port, "GET", "/api/state")[1]["running"]
    deadline = time.time() + 120
    while request(port, "GET", "/api/state")[1]["running"] and time.time() < deadline:
        time.sleep(0.2)
    view = request(port, "GET", "/api/state")[1]
    assert view["round"] == 1 and view["error"] is None and len(view["cells"]) == 6 and "round 0" in view["log"]
    assert len(json.loads((folder / "campaign.json").read_text())["ledger"]) == 6


def test_a_campaign_from_the_page_equals_one_typed_into_the_csvs(tmp_path, pretrained):
    """Three rounds labeled through the page's requests, and the same labels typed into the CSVs and ingested:
    the same ledger, the same labels and the same model."""
    typed, truth = start(tmp_path, pretrained, "typed")
    paged, _ = start(tmp_path, pretrained, "paged")
    http_server, state = serve_in_background(paged)
    port, token = http_server.server_address[1], state.token
    for round_index in range(3):
        rows = list(csv.DictReader((typed / f"round-{round_index:03d}.csv").open()))
        for row in rows:
            row["label"] = truth[row["file"]]
        with (typed / f"round-{round_index:03d}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        campaign.main(["ingest", str(typed), "--device", "cpu"])
        for number, cell in enumerate(request(port, "GET", "/api/state")[1]["cells"], start=1):
            assert request(port, "POST", "/api/label", {"number": number, "label": truth[cell["file"]]}, token)[0] == 200
        request(port, "POST", "/api/next", {}, token)
        while request(port, "GET", "/api/state")[1]["running"]:
            time.sleep(0.2)
    http_server.shutdown()
    states = [json.loads((folder / "campaign.json").read_text()) for folder in (typed, paged)]
    assert states[0]["ledger"] == states[1]["ledger"] and len(states[0]["ledger"]) == 18
    assert (typed / "export" / "labels.csv").read_text() == (paged / "export" / "labels.csv").read_text()
    models = [torch.load(folder / "export" / "model.pt", weights_only=True)["model"] for folder in (typed, paged)]
    assert all(torch.equal(models[0][key], models[1][key]) for key in models[0])


def chromium_and_playwright():
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        return None, "playwright is not installed (.ci/run installs it: pip install playwright)"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return None, "no chromium on this machine (.ci/run installs it: apt-get install -y chromium)"
    return browser, ""


def label_round_with_the_keyboard(page, port, classes, truth, round_index, skip_at=None):
    """Label every cell of the page's round by key presses, one cell at a time; the labels given, in order."""
    page.wait_for_function(f"document.getElementById('round').textContent === '{round_index}'", timeout=120_000)
    page.wait_for_selector("#strip img")
    cells = request(port, "GET", "/api/state")[1]["cells"]
    given = []
    for index, cell in enumerate(cells):
        page.wait_for_function(f"document.getElementById('which').textContent.startsWith('cell {index + 1} ')")
        label = "skip" if index == skip_at else truth[cell["file"]]
        page.keyboard.press("s" if label == "skip" else str(classes.index(label) + 1))
        given.append((cell["file"], label))
    page.wait_for_function(f"document.getElementById('progress').textContent.startsWith('{len(cells)} of ')")
    page.wait_for_function("document.getElementById('saving').textContent === 'every label saved'")
    return given


def test_a_campaign_done_with_the_keyboard_in_a_real_browser_equals_one_typed_into_the_csvs(tmp_path, pretrained):
    """Three rounds labeled in headless Chromium (keys, a skip, an undo, the Train button), then the same labels
    typed into the CSVs of a second campaign: the same ledger, labels and model."""
    browser_path, why = chromium_and_playwright()
    if browser_path is None:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    folder, truth = start(tmp_path, pretrained, n=10, count=60)
    typed, _ = start(tmp_path, pretrained, "typed", n=10, count=60)
    http_server, _ = serve_in_background(folder)
    port = http_server.server_address[1]
    classes = json.loads((folder / "campaign.json").read_text())["classes"]
    rounds = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(f"http://127.0.0.1:{port}/")
            for round_index in range(3):
                given = label_round_with_the_keyboard(page, port, classes, truth, round_index, skip_at=3)
                if round_index == 0:
                    page.keyboard.press("u")  # undo the last label, then give it again
                    page.wait_for_function("document.getElementById('progress').textContent.startsWith('9 of 10')")
                    page.keyboard.press(str(classes.index(given[-1][1]) + 1))
                    page.wait_for_function("document.getElementById('progress').textContent.startsWith('10 of 10')")
                    page.wait_for_function("document.getElementById('saving').textContent === 'every label saved'")
                    page.screenshot(path=str(tmp_path / "labeling-page.png"))
                labels = query_labels(folder, round_index)
                assert [labels[file] for file, _ in given] == [label for _, label in given]  # the CSV is the page
                rounds.append(given)
                page.click("#train")
            page.wait_for_function("document.getElementById('round').textContent === '3'", timeout=120_000)
            browser.close()
    finally:
        http_server.shutdown()
    for round_index, given in enumerate(rounds):  # the same labels, typed into the other campaign's CSVs
        rows = list(csv.DictReader((typed / f"round-{round_index:03d}.csv").open()))
        assert [row["file"] for row in rows] == [file for file, _ in given]
        for row, (_, label) in zip(rows, given):
            row["label"] = label
        with (typed / f"round-{round_index:03d}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        campaign.main(["ingest", str(typed), "--device", "cpu"])
    states = [json.loads((f / "campaign.json").read_text()) for f in (folder, typed)]
    assert states[0]["ledger"] == states[1]["ledger"] and len(states[0]["ledger"]) == 30
    assert sum(entry["label"] == "skip" for entry in states[0]["ledger"]) == 3
    models = [torch.load(f / "export" / "model.pt", weights_only=True)["model"] for f in (folder, typed)]
    assert all(torch.equal(models[0][key], models[1][key]) for key in models[0])
    if os.environ.get("HEP2_SCREENSHOT"):  # the docs' picture: HEP2_SCREENSHOT=docs/campaign-label-page.png pytest ...
        shutil.copy(tmp_path / "labeling-page.png", os.environ["HEP2_SCREENSHOT"])
