"""A local web page for a labeling campaign: the person in the loop labels the pending query in a browser.

Not the paper (the workshop): the paper's oracle reveals stored labels; lab/campaign.py puts a person in its
place, and this page is that person's screen. Started by

    python -m lab.labeling CAMPAIGN                # prints the page's address, on the loopback address only

The page shows the pending query's cells one at a time, large, with the model's two most probable classes and
the cell's entropy (Eq. 3); a key per class (1 to 6), s to skip, u to undo, arrows to move; a button starts the
next round, the same step as `python -m lab.campaign ingest`. Each label is one cell's update of the round's CSV, written
atomically before the page shows it saved, so the page and the CSV are two views of one state.

Security: the server listens on 127.0.0.1 only and answers only Host headers naming it (no DNS rebinding);
every request that changes state carries the server's random token (no cross-site request forgery); cells
are addressed by their number in the query, never by a path from the request.
"""

import argparse
import contextlib
import csv
import io
import json
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from data import DataError, read_cell
from lab import campaign
from lab.commands import run_command
from lab.devices import add_device_flag, pick_device
from lab.layouts import canonical_class, read_csv_rows, spreadsheet_cell
from lab.runs import write_text_atomic

HEADER = ["number", "file", "round", "entropy", "first", "p_first", "second", "p_second", "label"]


class Labeling:
    """The state the page works on: the campaign folder, one lock for every change, and the running round."""

    def __init__(self, folder: Path, device="auto"):
        self.folder, self.device = Path(folder), device
        self.lock = threading.Lock()  # one change at a time: a label is one cell's update of the file on disk
        self.token = secrets.token_urlsafe(24)
        self.training: threading.Thread | None = None
        self.log = io.StringIO()
        self.error: str | None = None
        campaign.load_campaign(self.folder)  # a folder that is not a campaign is one line, before serving

    def query_path(self, state: dict) -> Path:
        return self.folder / f"round-{state['round']:03d}.csv"

    def rows(self, state: dict) -> list[dict]:
        """The pending query's rows, in query order, as the CSV now holds them (a spreadsheet may have changed it)."""
        path = self.query_path(state)
        lines, _ = read_csv_rows(path) if path.is_file() else ([], ",")
        header = [cell.strip() for cell in lines[0]] if lines else []
        found = {row.get("file"): row for row in (dict(zip(header, line)) for line in lines[1:])}
        rows = []
        for number, entry in enumerate(state["pending"], start=1):
            row = found.get(entry["file"], {})
            rows.append({key: row.get(key, "") for key in HEADER} | {"number": number, "file": entry["file"]})
        return rows

    def view(self) -> dict:
        """What the page shows: the round, its cells, the classes, the progress and the running round's log."""
        state = campaign.load_campaign(self.folder)
        rows = self.rows(state) if state["pending"] else []
        labeled = sum(1 for row in rows if row["label"].strip())
        history = state["history"][-1] if state["history"] else None
        return {
            "round": state["round"],
            "classes": state["classes"],
            "cells": rows,
            "labeled": labeled,
            "running": self.training is not None and self.training.is_alive(),
            "log": self.log.getvalue()[-4000:],
            "error": self.error,
            "validation": history["validation"] if history else None,
        }

    def label(self, number: int, label: str) -> dict:
        """Set (or clear, with '') the label of cell `number` of the pending query, and only it, in the CSV."""
        with self.lock:
            if self.training is not None and self.training.is_alive():
                raise DataError("a round is being trained; label the next round's cells when it ends")
            state = campaign.load_campaign(self.folder)
            if not 1 <= number <= len(state["pending"]):
                raise DataError(f"cell {number}: the query has cells 1 to {len(state['pending'])}")
            canonical = "" if not label else campaign.SKIP if label.lower() == campaign.SKIP else canonical_class(label)
            if canonical is None or canonical not in state["classes"] + [campaign.SKIP, ""]:
                raise DataError(f"'{label}': expected one of {', '.join(state['classes'] + [campaign.SKIP])}")
            rows = self.rows(state)
            rows[number - 1]["label"] = canonical
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(HEADER)
            for row in rows:
                writer.writerow([spreadsheet_cell(str(row[key])) if key == "file" else row[key] for key in HEADER])
            write_text_atomic(buffer.getvalue(), self.query_path(state))  # saved before the page says so
            return rows[number - 1]

    def next_round(self) -> None:
        """Start `python -m lab.campaign ingest` in the background; refused while one runs."""
        with self.lock:
            if self.training is not None and self.training.is_alive():
                raise DataError("the next round is already being trained")
            self.log, self.error = io.StringIO(), None
            self.training = threading.Thread(target=self._ingest, daemon=True)
            self.training.start()

    def _ingest(self) -> None:
        with contextlib.redirect_stdout(self.log):
            try:
                campaign.ingest(self.folder, pick_device(self.device))
            except DataError as error:
                self.error = str(error)
            except Exception as error:  # shown on the page, which the person can still use
                self.error = f"the round failed: {error.__class__.__name__}: {error}"

    def cell_png(self, number: int) -> bytes:
        """Cell `number` of the pending query as a PNG, stretched to its brightest pixel for display only."""
        state = campaign.load_campaign(self.folder)
        if not 1 <= number <= len(state["pending"]):
            raise DataError(f"cell {number}: the query has cells 1 to {len(state['pending'])}")
        array = read_cell(Path(state["pool"]) / state["pending"][number - 1]["file"])
        peak = float(array.max()) or 1.0
        buffer = io.BytesIO()
        Image.fromarray((255 * array / peak).clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()


def handler_for(labeling: Labeling, port_holder: dict):
    """The request handler: the page, its state as JSON, one cell's image, a label, the next round."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the terminal shows the address and errors only
            pass

        def send(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Frame-Options", "DENY")
            self.end_headers()
            self.wfile.write(body)

        def answer(self, status: int, payload) -> None:
            self.send(status, json.dumps(payload).encode())

        def trusted_host(self) -> bool:
            host = self.headers.get("Host", "")
            return host in (f"127.0.0.1:{port_holder['port']}", f"localhost:{port_holder['port']}")

        def do_GET(self):
            if not self.trusted_host():
                return self.answer(HTTPStatus.FORBIDDEN, {"error": "unknown host"})
            try:
                if self.path == "/":
                    return self.send(HTTPStatus.OK, page(labeling.token).encode(), "text/html; charset=utf-8")
                if self.path == "/api/state":
                    return self.answer(HTTPStatus.OK, labeling.view())
                if self.path.startswith("/cell/") and self.path.removeprefix("/cell/").isdigit():
                    return self.send(HTTPStatus.OK, labeling.cell_png(int(self.path.removeprefix("/cell/"))), "image/png")
            except DataError as error:
                return self.answer(HTTPStatus.NOT_FOUND, {"error": str(error)})
            return self.answer(HTTPStatus.NOT_FOUND, {"error": "no such page"})

        def do_POST(self):
            if not self.trusted_host():
                return self.answer(HTTPStatus.FORBIDDEN, {"error": "unknown host"})
            if not secrets.compare_digest(self.headers.get("X-Token", ""), labeling.token):
                return self.answer(HTTPStatus.FORBIDDEN, {"error": "missing or wrong token"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(min(length, 10_000)) or b"{}")
                if self.path == "/api/label" and isinstance(body.get("number"), int):
                    return self.answer(HTTPStatus.OK, labeling.label(body["number"], str(body.get("label", ""))))
                if self.path == "/api/next":
                    labeling.next_round()
                    return self.answer(HTTPStatus.ACCEPTED, {"started": True})
            except ValueError:
                return self.answer(HTTPStatus.BAD_REQUEST, {"error": "expected a JSON body"})
            except DataError as error:
                return self.answer(HTTPStatus.CONFLICT, {"error": str(error)})
            return self.answer(HTTPStatus.BAD_REQUEST, {"error": "expected /api/label {number, label} or /api/next"})

    return Handler


def serve(folder: Path, port: int = 0, device="auto", ready=None) -> None:
    """Serve the campaign's page on 127.0.0.1 until Ctrl-C; ready(server, labeling) is called once it listens."""
    labeling = Labeling(folder, device)
    port_holder = {"port": port}
    server = ThreadingHTTPServer(("127.0.0.1", port), handler_for(labeling, port_holder))
    port_holder["port"] = server.server_address[1]
    print(f"labeling {folder}: open http://127.0.0.1:{port_holder['port']}/ (Ctrl-C stops; every label is saved)")
    if ready is not None:
        ready(server, labeling)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("campaign", help="campaign folder (made by `python -m lab.campaign query`)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: 0, any free one)")
    add_device_flag(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_command(lambda args: serve(Path(args.campaign), args.port, args.device), args)


def page(token: str) -> str:
    """The page: plain HTML and JavaScript, no outside resources."""
    return PAGE.replace("__TOKEN__", token)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>HEp-2 labeling</title>
<style>
body { font-family: sans-serif; margin: 1em; background: #fafafa; }
#main { display: flex; gap: 1.5em; align-items: flex-start; }
#cell { width: 360px; height: 360px; image-rendering: auto; background: black; border: 1px solid #444; }
button { margin: 2px; padding: 6px 10px; font-size: 15px; }
button.chosen { background: #2a7; color: white; }
#strip { display: flex; flex-wrap: wrap; gap: 3px; margin-top: 1em; max-width: 900px; }
#strip img { width: 48px; height: 48px; border: 3px solid #ccc; cursor: pointer; }
#strip img.done { border-color: #2a7; } #strip img.current { border-color: #d33; }
#log { white-space: pre-wrap; font-size: 12px; background: #eee; padding: 4px; max-height: 160px; overflow: auto; }
.error { color: #b00; }
</style></head><body>
<h2>HEp-2 labeling, round <span id="round"></span>: <span id="progress"></span></h2>
<div id="main">
  <div><img id="cell" alt="the cell to label"><div id="cellerror" class="error"></div></div>
  <div>
    <div id="which"></div>
    <div id="model"></div>
    <div id="buttons"></div>
    <div><button id="skip">s: skip (cannot judge)</button> <button id="undo">u: undo</button>
      <button id="prev">&larr; back</button> <button id="nextcell">&rarr; next</button></div>
    <div style="margin-top:1em"><button id="train">Train and ask the next round</button></div>
    <div id="status"></div>
    <div id="log"></div>
  </div>
</div>
<div id="strip"></div>
<script>
const TOKEN = "__TOKEN__";
let view = null, current = 0, history = [], polling = null;
async function post(path, body) {
  const response = await fetch(path, {method: "POST", headers: {"X-Token": TOKEN, "Content-Type": "application/json"},
                                      body: JSON.stringify(body)});
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}
async function load() {
  view = await (await fetch("/api/state")).json();
  current = Math.min(current, Math.max(0, view.cells.length - 1));
  draw(true);
  if (view.running && !polling) polling = setInterval(poll, 1000);
}
async function poll() {
  const now = await (await fetch("/api/state")).json();
  document.getElementById("log").textContent = now.log;
  if (!now.running) { clearInterval(polling); polling = null; current = 0; history = []; await load(); }
}
function draw(strip) {
  document.getElementById("round").textContent = view.round;
  document.getElementById("progress").textContent = view.labeled + " of " + view.cells.length + " labeled";
  const cell = view.cells[current];
  const status = document.getElementById("status");
  status.textContent = view.running ? "training the next round..." :
    (view.error ? "" : (view.validation ? "held-out MCA " + (100 * view.validation.mca).toFixed(1) + "%, ACA " +
     (100 * view.validation.aca).toFixed(1) + "%" : ""));
  if (view.error) { status.textContent = view.error; status.className = "error"; } else status.className = "";
  document.getElementById("log").textContent = view.log;
  const buttons = document.getElementById("buttons");
  buttons.innerHTML = "";
  view.classes.forEach((name, index) => {
    const button = document.createElement("button");
    button.textContent = (index + 1) + ": " + name.replace("_", " ");
    button.id = "class-" + name;
    if (cell && cell.label === name) button.className = "chosen";
    button.onclick = () => give(name);
    buttons.appendChild(button);
  });
  if (!cell) { document.getElementById("which").textContent = "nothing pending"; return; }
  document.getElementById("which").textContent = "cell " + cell.number + " of " + view.cells.length +
    (cell.label ? " - labeled: " + cell.label : "");
  document.getElementById("model").textContent = "model: " + cell.first + " " + cell.p_first + ", " + cell.second +
    " " + cell.p_second + "; entropy " + cell.entropy;
  const image = document.getElementById("cell");
  document.getElementById("cellerror").textContent = "";
  image.onerror = async () => {
    const answer = await fetch("/cell/" + cell.number).then(r => r.json()).catch(() => ({}));
    document.getElementById("cellerror").textContent = (answer.error || "cannot read this image") + " (s skips it)";
  };
  image.src = "/cell/" + cell.number;
  if (strip) {
    const row = document.getElementById("strip");
    row.innerHTML = "";
    view.cells.forEach((c, index) => {
      const thumb = document.createElement("img");
      thumb.src = "/cell/" + c.number; thumb.title = c.number + (c.label ? ": " + c.label : "");
      thumb.onclick = () => { current = index; draw(false); };
      row.appendChild(thumb);
    });
  }
  document.querySelectorAll("#strip img").forEach((thumb, index) => {
    thumb.className = (view.cells[index].label ? "done " : "") + (index === current ? "current" : "");
  });
}
async function give(label) {
  const cell = view.cells[current];
  if (!cell || view.running) return;
  try {
    await post("/api/label", {number: cell.number, label: label});
    history.push({index: current, before: cell.label});
    cell.label = label;
    view.labeled = view.cells.filter(c => c.label).length;
    if (current < view.cells.length - 1) current += 1;
    draw(false);
  } catch (error) { document.getElementById("status").textContent = error.message; }
}
async function undo() {
  const last = history.pop();
  if (!last) return;
  await post("/api/label", {number: view.cells[last.index].number, label: last.before || ""});
  view.cells[last.index].label = last.before || "";
  view.labeled = view.cells.filter(c => c.label).length;
  current = last.index;
  draw(false);
}
async function train() {
  try { await post("/api/next", {}); view.running = true; draw(false); polling = setInterval(poll, 1000); }
  catch (error) { document.getElementById("status").textContent = error.message; }
}
document.getElementById("skip").onclick = () => give("skip");
document.getElementById("undo").onclick = undo;
document.getElementById("prev").onclick = () => { current = Math.max(0, current - 1); draw(false); };
document.getElementById("nextcell").onclick = () => { current = Math.min(view.cells.length - 1, current + 1); draw(false); };
document.getElementById("train").onclick = train;
document.addEventListener("keydown", (event) => {
  if (!view) return;
  const number = parseInt(event.key, 10);
  if (number >= 1 && number <= view.classes.length) give(view.classes[number - 1]);
  else if (event.key === "s") give("skip");
  else if (event.key === "u") undo();
  else if (event.key === "ArrowLeft") { current = Math.max(0, current - 1); draw(false); }
  else if (event.key === "ArrowRight") { current = Math.min(view.cells.length - 1, current + 1); draw(false); }
});
load();
</script></body></html>
"""


if __name__ == "__main__":
    main()
