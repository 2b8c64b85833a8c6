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
import sys
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
from lab.layouts import canonical_class, read_csv_rows, squash, unescaped
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
        found = {unescaped(row.get("file", "")): row for row in (dict(zip(header, line)) for line in lines[1:])}
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
            set_label(self.query_path(state), state["pending"][number - 1]["file"], canonical)
            return self.rows(state)[number - 1]

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


def set_label(path: Path, file: str, label: str) -> None:
    """Change the label of one row of the round's CSV, and nothing else: the other columns (a note a spreadsheet
    added), their order, the rows' order and the delimiter stay as the file has them; written atomically."""
    if not path.is_file():
        raise DataError(f"{path.name} is gone from the campaign folder; `python -m lab.campaign status` shows the round")
    lines, delimiter = read_csv_rows(path)
    header = [squash(cell) for cell in lines[0]] if lines else []
    if "file" not in header or "label" not in header:
        raise DataError(f"{path.name}: expected its file and label columns in the first line")
    file_column, label_column = header.index("file"), header.index("label")
    rows = [line for line in lines[1:] if len(line) > file_column and unescaped(line[file_column].strip()) == file]
    if not rows:
        raise DataError(f"{path.name}: has no row for {file} any more; put it back, or ingest the round")
    for line in rows:
        line.extend([""] * (label_column + 1 - len(line)))
        line[label_column] = label
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter).writerows(lines)
    write_text_atomic(buffer.getvalue(), path)  # saved before the page says so


class Handler(BaseHTTPRequestHandler):
    """The page, its state as JSON, one cell's image, a label, the next round; handler_for binds it to a campaign."""

    labeling: Labeling
    port_holder: dict

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
        return host in (f"127.0.0.1:{self.port_holder['port']}", f"localhost:{self.port_holder['port']}")

    def trusted_origin(self) -> bool:
        """A browser names the page that sent a POST: only this server's own page may (beside the token)."""
        origin = self.headers.get("Origin")
        return origin is None or origin in (f"http://{host}:{self.port_holder['port']}" for host in LOOPBACK_NAMES)

    def do_GET(self):
        if not self.trusted_host():
            return self.answer(HTTPStatus.FORBIDDEN, {"error": "unknown host"})
        try:
            if self.path == "/":
                return self.send(HTTPStatus.OK, page(self.labeling.token).encode(), "text/html; charset=utf-8")
            if self.path == "/api/state":
                return self.answer(HTTPStatus.OK, self.labeling.view())
            if self.path.startswith("/cell/") and self.path.removeprefix("/cell/").isdigit():
                return self.send(HTTPStatus.OK, self.labeling.cell_png(int(self.path.removeprefix("/cell/"))), "image/png")
        except DataError as error:
            return self.answer(HTTPStatus.NOT_FOUND, {"error": str(error)})
        return self.answer(HTTPStatus.NOT_FOUND, {"error": "no such page"})

    def do_POST(self):
        if not self.trusted_host() or not self.trusted_origin():
            return self.answer(HTTPStatus.FORBIDDEN, {"error": "unknown host or origin"})
        if not secrets.compare_digest(self.headers.get("X-Token", ""), self.labeling.token):
            return self.answer(HTTPStatus.FORBIDDEN, {"error": "missing or wrong token"})
        try:
            body = self.json_body()
            if self.path == "/api/label":
                number = body.get("number")
                if type(number) is not int or not isinstance(body.get("label", ""), str):  # true is no number
                    raise ValueError("expected {\"number\": an integer, \"label\": a class name}")
                return self.answer(HTTPStatus.OK, self.labeling.label(number, body.get("label", "")))
            if self.path == "/api/next":
                self.labeling.next_round()
                return self.answer(HTTPStatus.ACCEPTED, {"started": True})
        except ValueError as error:
            return self.answer(HTTPStatus.BAD_REQUEST, {"error": str(error)})
        except DataError as error:
            return self.answer(HTTPStatus.CONFLICT, {"error": str(error)})
        return self.answer(HTTPStatus.BAD_REQUEST, {"error": "expected /api/label {number, label} or /api/next"})

    def json_body(self) -> dict:
        """The request's JSON object; anything else is a ValueError with one line."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ValueError("Content-Length: expected a whole number") from None
        if not 0 <= length <= MAX_BODY:
            raise ValueError(f"Content-Length {length}: expected 0 to {MAX_BODY} bytes")
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            raise ValueError(f"the body did not arrive within {READ_SECONDS} s") from None
        if len(raw) < length:
            raise ValueError(f"Content-Length {length}: the body has {len(raw)} bytes")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise ValueError("expected a JSON body") from None
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        return body



def handler_for(labeling: Labeling, port_holder: dict):
    """Handler bound to this campaign and the port it listens on (known once the server has bound it); every read
    of a request has a deadline (READ_SECONDS), so a short body cannot hold a thread."""
    bound = {"labeling": labeling, "port_holder": port_holder, "timeout": READ_SECONDS}
    return type("CampaignHandler", (Handler,), bound)


READ_SECONDS = 10  # how long a request may take to arrive
MAX_BODY = 10_000  # bytes of a POST body: a label is a few dozen
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


class QuietServer(ThreadingHTTPServer):
    """A request that fails outside the handler's own answers (a client gone mid-answer) is one line, not a
    traceback on the labeler's terminal."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        print(f"labeling: a request from {client_address[0]} failed ({error.__class__.__name__}: {error})")


def serve(folder: Path, port: int = 0, device="auto", ready=None) -> None:
    """Serve the campaign's page on 127.0.0.1 until Ctrl-C; ready(server, labeling) is called once it listens."""
    if not 0 <= port <= 65535:
        raise DataError(f"--port {port}: expected a port from 0 (any free one) to 65535")
    labeling = Labeling(folder, device)
    port_holder = {"port": port}
    try:
        server = QuietServer(("127.0.0.1", port), handler_for(labeling, port_holder))
    except OSError as error:
        raise DataError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({error.strerror}); choose another") from None
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
    return PAGE.replace("__TOKEN__", token).replace("__FEWEST__", str(campaign.FEWEST_FOR_A_PERCENTAGE))


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
    <div id="saving"></div>
    <div id="log"></div>
  </div>
</div>
<div id="strip"></div>
<script>
const TOKEN = "__TOKEN__";
let view = null, current = 0, history = [], polling = null, queue = Promise.resolve(), unsaved = 0, failed = null;
const FEWEST_FOR_A_PERCENTAGE = __FEWEST__;  // lab/campaign.py's: fewer held-out labels give no percentage
function quality(validation) {
  if (!validation) return "";
  if (validation.count < FEWEST_FOR_A_PERCENTAGE)
    return "held-out: " + Math.round(validation.aca * validation.count) + " of " + validation.count +
           " labels right (too few for a percentage)";
  return "held-out MCA " + (100 * validation.mca).toFixed(1) + "%, ACA " + (100 * validation.aca).toFixed(1) +
         "% (" + validation.count + " labels)";
}
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
  status.textContent = view.running ? "training the next round..." : (view.error ? "" : quality(view.validation));
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
function send(number, label) {
  // Labels reach the server one at a time, in the order they were given: a key press labels the cell on screen
  // when it was pressed, whatever the server's latency (the page moves on at once, the saving follows).
  unsaved += 1; showSaving();
  queue = queue.then(() => post("/api/label", {number: number, label: label}))
    .catch((error) => { failed = error.message; return load(); })
    .finally(() => { unsaved -= 1; showSaving(); });
  return queue;
}
function showSaving() {
  const saving = document.getElementById("saving");
  saving.textContent = failed ? "not saved: " + failed : (unsaved ? "saving " + unsaved + "..." : "every label saved");
  saving.className = failed ? "error" : "";
}
function give(label) {
  const index = current, cell = view.cells[index];
  if (!cell || view.running) return;
  failed = null;
  history.push({index: index, before: cell.label});
  cell.label = label;
  view.labeled = view.cells.filter(c => c.label).length;
  if (current < view.cells.length - 1) current += 1;
  draw(false);
  send(cell.number, label);
}
function undo() {
  const last = history.pop();
  if (!last) return;
  const cell = view.cells[last.index];
  cell.label = last.before || "";
  view.labeled = view.cells.filter(c => c.label).length;
  current = last.index;
  draw(false);
  send(cell.number, cell.label);
}
async function train() {
  await queue;  // every label given reaches the file before the round starts
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
