"""Reliability, round five (#50): the label page under a fast expert, a spreadsheet beside it, hostile requests,
small numbers shown as facts, and messages that send the user the right way."""

import csv
import http.client
import json
import socket
import time

import pytest
from conftest import TINY, fails
from test_labeling import chromium_and_playwright, query_labels, request, serve_in_background, start
from test_specimens import write_cells, write_specimens_csv

import active
import train
from data import DataError
from lab import campaign, labeling
from lab.layouts import load_dataset
from lab.splits import resolve_split


def raw(port, text: bytes, wait=5.0) -> bytes:
    """Send raw bytes to the server and read what it answers (b'' if it closed without a word)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as connection:
        connection.sendall(text)
        chunks = []
        try:
            while chunk := connection.recv(4096):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def post_bytes(port, body: bytes, token: str, length=None) -> bytes:
    headers = f"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Token: {token}\r\n"
    headers += f"Content-Type: application/json\r\nContent-Length: {len(body) if length is None else length}\r\n"
    return raw(port, (headers + "Connection: close\r\n\r\n").encode() + body)


# 1. Typing ahead -------------------------------------------------------------------------------------------


def test_keys_pressed_without_pause_label_the_cells_they_were_pressed_on(tmp_path, pretrained, monkeypatch):
    """A whole query's keys pressed with no delay, on a server slowed on purpose: each label lands on the cell
    that was on screen when its key went down, in order, and the CSV ends as the keys say."""
    browser_path, why = chromium_and_playwright()
    if browser_path is None:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    real = labeling.set_label
    monkeypatch.setattr(labeling, "set_label", lambda *args: time.sleep(0.15) or real(*args))  # a slow disk
    folder, truth = start(tmp_path, pretrained, n=12, count=36)
    http_server, _ = serve_in_background(folder)
    port = http_server.server_address[1]
    classes = json.loads((folder / "campaign.json").read_text())["classes"]
    cells = request(port, "GET", "/api/state")[1]["cells"]
    pressed = [classes[(index * 5 + 1) % len(classes)] for index in range(len(cells))]  # not the truth: any class
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#strip img")
            for label in pressed:  # as fast as the keyboard goes
                page.keyboard.press(str(classes.index(label) + 1))
            page.wait_for_function("document.getElementById('saving').textContent === 'every label saved'",
                                   timeout=60_000)  # fmt: skip
            browser.close()
    finally:
        http_server.shutdown()
    labels = query_labels(folder, 0)
    assert [labels[cell["file"]] for cell in cells] == pressed


# 2. The spreadsheet beside the page -----------------------------------------------------------------------


def test_a_label_changes_one_cell_of_the_csv_and_keeps_a_spreadsheets_columns(server):
    folder, truth, port, state = server
    path = folder / "round-000.csv"
    lines = list(csv.reader(path.open()))
    lines[0] = lines[0][:3] + ["note"] + lines[0][3:]  # a column added in the middle, a note on two rows
    for number, line in enumerate(lines[1:], start=1):
        line.insert(3, "check again" if number in (2, 4) else "")
    lines[1:] = lines[1:][::-1]  # and the rows sorted otherwise
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(lines)
    cell = request(port, "GET", "/api/state")[1]["cells"][3]
    status, answer = request(port, "POST", "/api/label", {"number": 4, "label": truth[cell["file"]]}, state.token)
    assert status == 200 and answer["label"] == truth[cell["file"]]
    after = list(csv.reader(path.open()))
    label_column = after[0].index("label")
    changed = [i for i, (old, new) in enumerate(zip(lines, after)) if old != new]
    assert len(after) == len(lines) and len(changed) == 1  # one row, one cell
    assert after[changed[0]][label_column] == truth[cell["file"]] and after[changed[0]][1] == cell["file"]
    assert [line[:label_column] + line[label_column + 1 :] for line in after] == [
        line[:label_column] + line[label_column + 1 :] for line in lines
    ]  # every other cell as the spreadsheet left it, notes and order included


def test_a_deleted_query_csv_is_one_line_not_a_new_file(server):
    folder, truth, port, state = server
    (folder / "round-000.csv").unlink()
    status, answer = request(port, "POST", "/api/label", {"number": 1, "label": "golgi"}, state.token)
    assert status == 409 and "round-000.csv is gone" in answer["error"] and "\n" not in answer["error"]
    assert not (folder / "round-000.csv").exists()


# 3. Requests the server does not expect -------------------------------------------------------------------


def test_every_unexpected_request_gets_a_one_line_400_and_the_terminal_no_traceback(server, monkeypatch, capfd):
    folder, truth, port, state = server
    before = (folder / "round-000.csv").read_bytes()
    for body in (b"[1,2]", b"7", b'"x"', b"null", b"{", b'{"number": true, "label": "golgi"}',
                 b'{"number": 1.0, "label": "golgi"}', b'{"number": 1, "label": 5}'):  # fmt: skip
        answer = post_bytes(port, body, state.token)
        assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), (body, answer[:80])
        assert b'"error"' in answer
    assert post_bytes(port, b"{}", state.token, length=-5).split(b" ")[1] == b"400"
    assert post_bytes(port, b"{}", state.token, length="x").split(b" ")[1] == b"400"
    assert post_bytes(port, b"{}", state.token, length=10**9).split(b" ")[1] == b"400"
    assert (folder / "round-000.csv").read_bytes() == before
    assert "Traceback" not in "".join(capfd.readouterr())


def test_a_body_shorter_than_its_length_times_out_with_an_answer(tmp_path, pretrained, monkeypatch):
    monkeypatch.setattr(labeling, "READ_SECONDS", 1)
    folder, _ = start(tmp_path, pretrained)
    http_server, state = serve_in_background(folder)
    try:
        started = time.time()
        answer = post_bytes(http_server.server_address[1], b'{"num', state.token, length=200)
        assert answer.split(b" ")[1] == b"400" and b"did not arrive" in answer and time.time() - started < 5
    finally:
        http_server.shutdown()


def test_another_sites_origin_is_refused_even_with_the_token(server):
    folder, truth, port, state = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Host": f"127.0.0.1:{port}", "X-Token": state.token, "Origin": "http://evil.example"}
    connection.request("POST", "/api/label", body=json.dumps({"number": 1, "label": "golgi"}), headers=headers)
    response = connection.getresponse()
    assert response.status == 403 and "origin" in json.loads(response.read())["error"]
    headers["Origin"] = f"http://127.0.0.1:{port}"  # the page itself
    connection.request("POST", "/api/label", body=json.dumps({"number": 1, "label": "golgi"}), headers=headers)
    assert connection.getresponse().status == 200


def test_ports_out_of_range_or_taken_are_one_line(tmp_path, pretrained):
    folder, _ = start(tmp_path, pretrained)
    fails(labeling.main, [str(folder), "--port", "70000"], "--port 70000", "0", "65535")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fails(labeling.main, [str(folder), "--port", str(port)], f"--port {port}", f"127.0.0.1:{port}")


# 4. Small numbers -----------------------------------------------------------------------------------------


def test_a_handful_of_held_out_labels_gives_a_count_not_a_percentage():
    assert campaign.held_out_quality({"mca": 0.0, "aca": 0.0, "count": 2}) == (
        "held-out: 0 of 2 labels right (too few for a percentage)"
    )
    assert "%" not in campaign.held_out_quality({"mca": 1.0, "aca": 1.0, "count": 9})
    assert campaign.held_out_quality({"mca": 0.5, "aca": 0.6, "count": 10}).startswith("held-out MCA 50.0% ACA 60.0%")
    assert campaign.held_out_quality(None) == "no held-out labels yet"
    page = labeling.page("t")
    assert f"const FEWEST_FOR_A_PERCENTAGE = {campaign.FEWEST_FOR_A_PERCENTAGE};" in page and "__FEWEST__" not in page


# 5. Messages that send the user the right way -------------------------------------------------------------


def test_a_specimen_of_several_classes_is_named_as_such(tmp_path):
    rows = write_cells(tmp_path, {"Homogeneous": {"h1": 3, "h2": 3}, "Speckled": {"h1": 2, "h2": 1}})
    write_specimens_csv(tmp_path / "specimens.csv", rows)
    dataset = load_dataset(tmp_path, cache=False)
    with pytest.raises(DataError) as error:
        resolve_split(None, dataset)
    text = str(error.value)
    assert "class 'speckled' has no specimen of its own" in text and "h1: 2 of 5 cells" in text
    assert "0 specimen(s)" not in text and "--split cells" in text


def test_the_advice_for_a_class_of_one_specimen_fits_the_script(tmp_path, pretrained):
    layout = {"Homogeneous": {"h1": 3, "h2": 3, "h3": 3}, "Golgi": {"g1": 4}}
    write_specimens_csv(tmp_path / "cells" / "specimens.csv", write_cells(tmp_path / "cells", layout))
    flags = TINY + ["--data", str(tmp_path / "cells")]
    text = fails(active.main, flags + ["--checkpoint", str(pretrained), "--out", str(tmp_path / "a")], "golgi")
    assert "--test-fraction" not in text and "--classes" not in text and "--split cells" in text
    text = fails(train.main, flags + ["--out", str(tmp_path / "p.pt")], "golgi")
    assert "--test-fraction 0" in text and "--split-file" in text


def test_a_campaign_status_after_a_tiny_held_out_round_shows_the_count(tmp_path, pretrained, capsys):
    folder, truth = start(tmp_path, pretrained)
    state = json.loads((folder / "campaign.json").read_text())
    state["history"] = [{"round": 0, "new_labels": 6, "labels": 6, "trained_on": 5, "epochs": 1,
                         "validation": {"mca": 0.0, "aca": 0.0, "count": 1}}]  # fmt: skip
    (folder / "campaign.json").write_text(json.dumps(state))
    capsys.readouterr()
    campaign.main(["status", str(folder)])
    out = capsys.readouterr().out
    assert "held-out: 0 of 1 labels right (too few for a percentage)" in out and "0.0%" not in out
