"""The `idlefleet` command: a customer's jobs from a terminal or a script.

Exit codes (also in `idlefleet --help`): 0 done; 1 server or network error; 2 bad usage or input the API refused
(400, 413, 422); 3 not logged in, or the token or role refused (401, 403); 4 no such object, or not yours (404);
5 a conflict or a payment problem (409, 402); 6 `wait`: the bid ended without completing (failed, expired, cancelled,
declined); 7 `wait`: the timeout passed first.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import config
from .api import ApiError, Client

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_AUTH, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_BID_ENDED, EXIT_TIMEOUT = range(8)
DONE = "completed"
ENDED = {"failed", "expired", "cancelled", "declined"}

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

app = typer.Typer(
    name="idlefleet",
    help="Buy compute on Idlefleet: upload datasets, estimate, bid, wait for and download results.",
    epilog="Exit codes: 0 ok · 1 server or network error · 2 bad usage or input (400, 413, 422) · 3 not logged in, "
    "or refused (401, 403) · 4 not found (404) · 5 conflict or payment (409, 402) · 6 `wait`: the bid ended "
    "without completing · 7 `wait`: timed out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON, for scripts.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the new object's id, for scripts.")]


class Exit(Exception):
    """Stop with a message on stderr and an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def exit_code(status: int) -> int:
    """The exit code for an API answer's HTTP status (0: no answer, the network)."""
    if status in (401, 403):
        return EXIT_AUTH
    if status == 404:
        return EXIT_NOT_FOUND
    if status in (402, 409):
        return EXIT_CONFLICT
    if 400 <= status < 500 and status != 429:
        return EXIT_USAGE
    return EXIT_ERROR  # 5xx, 429 (try again later), the network


def _client() -> Client:
    try:
        settings = config.current()
    except config.ConfigError as error:
        raise Exit(EXIT_USAGE, str(error)) from None
    if not settings.url or not settings.token:
        raise Exit(
            EXIT_AUTH,
            "Not logged in: run `idlefleet login --url URL --username NAME` "
            "(or set IDLEFLEET_URL and IDLEFLEET_TOKEN).",
        )
    return Client(settings.url, settings.token)


def _print_json(data: Any) -> None:
    # Plain print: rich would wrap long lines and break the JSON.
    print(json.dumps(data, indent=2))


def _text(value: Any) -> str:
    return "—" if value is None or value == "" else str(value)


def _ch(value: float | None) -> str:
    """CH to 3 significant digits, without an exponent: 4.1666e-06 → "0.00000417"."""
    return "—" if value is None else f"{Decimal(f'{value:.3g}'):f}"


def _named(bid: dict, name: str, key: str) -> str:
    """A bid's model or dataset by its name and id ("digits (7)"); the id alone from a server that gives no name."""
    return f"{bid[name]} ({bid[key]})" if bid.get(name) else str(bid[key])


def _dollars(value: Any) -> str:
    return "—" if value in (None, "") else f"${value}"


def _decimal(text: str, option: str) -> str:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise typer.BadParameter(f"{text!r} is not an amount of dollars, e.g. 0.05", param_hint=option) from None
    if not value.is_finite() or value <= 0:
        raise typer.BadParameter("give a positive amount of dollars", param_hint=option)
    return text


DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_deadline(text: str, *, now: datetime | None = None) -> str:
    """A deadline as the API takes it (ISO 8601 with its zone): from now ("90m", "2h", "3d") or a date and time
    ("2026-12-24T18:00", in this computer's zone unless it says its own)."""
    now = now or datetime.now(UTC)
    if match := DURATION.match(text.strip()):
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match[2]]
        return (now + timedelta(**{unit: float(match[1])})).isoformat(timespec="seconds")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give a time from now (90m, 2h, 3d) or a date and time (2026-12-24T18:00)",
            param_hint="--deadline",
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # this computer's zone
    return moment.isoformat(timespec="seconds")


# --- logging in -----------------------------------------------------------------------------------------------


@app.command()
def login(
    url: Annotated[
        str | None,
        typer.Option(help="The Idlefleet server, e.g. https://idlefleet.example.com", envvar="IDLEFLEET_URL"),
    ] = None,
    username: Annotated[str | None, typer.Option(help="Your username (asked when left out).")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input (first line).")
    ] = False,
    name: Annotated[str | None, typer.Option(help="A name for the token, shown on your account's tokens page.")] = None,
) -> None:
    """Get an API token with your username and password, and keep it (with the URL) in the config file.

    The password is asked for without echo; with --password-stdin, or when standard input is not a terminal, it is
    read from standard input."""
    url = url or config.load().get("url")
    if not url:
        raise typer.BadParameter("give the server, e.g. --url https://idlefleet.example.com", param_hint="--url")
    if not username:
        username = typer.prompt("Username")
    if password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
    if not password:
        raise Exit(EXIT_USAGE, "No password given.")
    token_name = name or f"idlefleet CLI on {socket.gethostname()}"
    with Client(url) as client:
        token = client.token_create(username, password, name=token_name)
    data = {**config.load(), "url": url.rstrip("/"), "token": token["token"], "username": username}
    data["expiry"] = token.get("expiry")
    path = config.save(data)
    expiry = f" It expires {token['expiry']}." if token.get("expiry") else ""
    out.print(f"Logged in to {escape(url)} as {escape(username)}. Token saved in {escape(str(path))}.{expiry}")


@app.command()
def logout() -> None:
    """Revoke the token at the server and forget it."""
    data = config.load()
    settings = config.current()
    if settings.url and data.get("token"):
        with Client(settings.url, data["token"]) as client:
            try:
                client.token_revoke()
            except ApiError as error:
                if error.status not in (401, 403):  # already revoked or expired: nothing to undo
                    raise
    if "token" in data:
        data.pop("token")
        data.pop("expiry", None)
        config.save(data)
        out.print("Logged out: the token is revoked and removed from the config file.")
    else:
        out.print("Not logged in.")


# --- models and datasets --------------------------------------------------------------------------------------


@app.command()
def models(
    name: Annotated[str | None, typer.Option(help="Only the models of this name.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only their ids, one a line.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List the inference models you can bid on (yours and the catalogue's)."""
    with _client() as client:
        rows = client.models()
    if name is not None:
        rows = [m for m in rows if m["name"] == name]
    if as_json:
        return _print_json(rows)
    if quiet:
        return print("\n".join(str(m["id"]) for m in rows))
    if not rows:
        out.print("No models yet: upload one on the web site (Models › Upload) or POST /api/v1/models/.")
        return
    table = Table("ID", "Name", "Kind", "Status", "Auto precision", "Source")
    for m in rows:
        table.add_row(
            str(m["id"]), escape(m["name"]), m.get("kind", ""), m.get("status", ""), _text(m.get("auto_precision")),
            "catalogue" if m.get("is_catalogue") else "yours",
        )  # fmt: skip
    out.print(table)


@app.command()
def upload(
    model_id: Annotated[int, typer.Argument(help="The model the dataset is for.")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help=".npy, .npz or text")],
    name: Annotated[str | None, typer.Option(help="A name for the dataset (default: the file's name).")] = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Upload a dataset for a model."""
    with _client() as client:
        dataset = client.dataset_upload(model_id, file, name=name)
    if as_json:
        return _print_json(dataset)
    if quiet:
        return print(dataset["id"])
    out.print(f"Dataset {dataset['id']} uploaded: {escape(dataset['name'])}, {dataset['item_count']:,} items.")


@app.command()
def datasets(model_id: int, as_json: JsonOption = False) -> None:
    """List your datasets of a model."""
    with _client() as client:
        rows = client.datasets(model_id)
    if as_json:
        return _print_json(rows)
    if not rows:
        out.print(f"No datasets for model {model_id} yet: `idlefleet upload {model_id} FILE` adds one.")
        return
    table = Table("ID", "Name", "Items", "Format", "Bytes", "Uploaded")
    for d in rows:
        table.add_row(
            str(d["id"]), escape(d["name"]), f"{d['item_count']:,}", d.get("format", ""), f"{d['size_bytes']:,}",
            d.get("created_at", "")[:19],
        )  # fmt: skip
    out.print(table)


@app.command()
def estimate(
    model_id: int,
    dataset_id: int,
    max_price: Annotated[
        str | None, typer.Option("--max-price", help="Dollars per CH: the suggested budget covers every item at it.")
    ] = None,
    precision: Annotated[str, typer.Option(help="auto, int8, fp8, fp16 or fp32.")] = "auto",
    as_json: JsonOption = False,
) -> None:
    """What a bid on a dataset would cost in each precision's pool, and a budget that covers it."""
    if max_price is not None:
        _decimal(max_price, "--max-price")
    with _client() as client:
        result = client.estimate(model_id, dataset_id, max_price_usd_per_ch=max_price, precision=precision)
    if as_json:
        return _print_json(result)
    table = Table("Precision", "Work (CH)", "Price per CH", "Per 1M items", "Whole dataset", "On offer now (CH)", "")
    for row in result["pools"]:
        picked = row["precision"] == result.get("precision")
        table.add_row(
            row["precision"].upper() + (" ←" if picked else ""), _ch(row["ch"]),
            _dollars(row["price_usd_per_ch"]) + (" (reserve)" if row.get("price_is_reserve") else ""),
            _dollars(row.get("price_per_million_usd")), _dollars(row.get("cost_usd")),
            _ch(row["ch_on_offer"]) if row["runnable"] else "—", escape(row.get("warning") or ""),
        )  # fmt: skip
    out.print(table)
    if result.get("nothing_runs"):
        out.print(f"[red]Nothing can run this model now:[/] {escape(result['nothing_runs'])}")
        return
    chosen = result.get("precision")
    if chosen:
        out.print(f"{result['items']:,} items in {chosen.upper()}: {_dollars(result.get('cost_usd'))}.")
    if result.get("below_reserve"):
        out.print(f"[red]The maximum price is below the {chosen.upper()} reserve: such a bid never trades.[/]")
    if result.get("suggested_budget_usd"):
        out.print(
            f"Suggested budget: ${result['suggested_budget_usd']} "
            f"(covers every item at up to ${result['max_price_usd_per_ch']} per CH)."
        )


# --- bids ----------------------------------------------------------------------------------------------------


@app.command()
def bid(
    model_id: int,
    dataset_id: int,
    max_price: Annotated[str, typer.Option("--max-price", help="Dollars per CH: you never pay more.")],
    budget: Annotated[str, typer.Option(help="Dollars: the most the job may cost, set aside while it runs.")],
    precision: Annotated[
        str, typer.Option(help="auto (the cheapest within your tolerance), int8, fp8, fp16, fp32.")
    ] = ("auto"),
    funding: Annotated[
        str | None, typer.Option(help="balance or card (default: the balance if it covers the budget, else the card).")
    ] = None,
    deadline: Annotated[str, typer.Option(help="From now (90m, 2h, 3d) or a date and time.")] = "24h",
    all_or_none: Annotated[bool, typer.Option("--all-or-none", help="Only buy compute for the whole job.")] = False,
    region: Annotated[
        str | None,
        typer.Option(help="Run only on cars in this market region, e.g. DE, for data residency (default: any region)."),
    ] = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Place a bid for a dataset's job. It enters the next auction round."""
    _decimal(max_price, "--max-price")
    _decimal(budget, "--budget")
    if funding not in (None, "balance", "card"):
        raise typer.BadParameter("balance or card", param_hint="--funding")
    when = parse_deadline(deadline)
    with _client() as client:
        placed = client.bid_place(
            inference_model=model_id, dataset=dataset_id, precision=precision, max_price_usd_per_ch=max_price,
            budget_usd=budget, funding=funding, deadline=when, all_or_none=all_or_none, region=region,
        )  # fmt: skip
    if as_json:
        return _print_json(placed)
    if quiet:
        return print(placed["id"])
    out.print(
        f"Bid {placed['id']} placed: {_items_total(placed):,} items in {placed['precision'].upper()}, up to "
        f"${placed['max_price_usd_per_ch']} per CH, budget ${placed['budget_usd']} ({placed['funding']}), "
        f"{_region(placed)}, status {placed['status']}. Follow it with `idlefleet wait {placed['id']}`."
    )


def _region(b: dict) -> str:
    """Where the bid runs: "region DE only" when pinned; "any region" when not (or from a server without regions)."""
    return f"region {b['region']} only" if b.get("region") else "any region"


def _items_total(b: dict) -> int:
    return b.get("items_total", b.get("items")) or 0


def _items_done(b: dict) -> int:
    return b.get("items_done") or 0


@app.command("bids")
def bids_list(as_json: JsonOption = False) -> None:
    """List your bids, newest first."""
    with _client() as client:
        rows = client.bids()
    if as_json:
        return _print_json(rows)
    if not rows:
        out.print("No bids yet: `idlefleet bid MODEL_ID DATASET_ID --max-price 0.05 --budget 1.00` places one.")
        return
    table = Table(
        "ID", "Model", "Dataset", "Precision", "Region", "Status", "Items done", "Charged", "Max per CH", "Budget"
    )
    for b in rows:
        table.add_row(
            str(b["id"]), _named(b, "model_name", "inference_model"), _named(b, "dataset_name", "dataset"),
            b["precision"], escape(b.get("region") or "any"), b["status"],
            f"{_items_done(b):,}/{_items_total(b):,}", _dollars(b.get("charged_usd")),
            _dollars(b["max_price_usd_per_ch"]), _dollars(b["budget_usd"]),
        )  # fmt: skip
    out.print(table)


@app.command()
def status(bid_id: int, as_json: JsonOption = False) -> None:
    """A bid's status, progress, cost so far and the compute it won."""
    with _client() as client:
        b = client.bid(bid_id)
    if as_json:
        return _print_json(b)
    _show_bid(b)


def _show_bid(b: dict) -> None:
    table = Table(show_header=False, box=None)
    model, dataset = _named(b, "model_name", "inference_model"), _named(b, "dataset_name", "dataset")
    for label, value in (
        ("Bid", b["id"]), ("Status", b["status"]), ("Model / dataset", f"{model} / {dataset}"),
        ("Precision", f"{b['precision']} (asked: {b['precision_requested']})"), ("Region", _region(b)),
        ("Items done", f"{_items_done(b):,} of {_items_total(b):,}"),
        ("Charged so far", _dollars(b.get("charged_usd"))), ("Max price per CH", _dollars(b["max_price_usd_per_ch"])),
        ("Budget", f"{_dollars(b['budget_usd'])} ({b['funding']})"),
        ("Deadline", b["deadline"]), ("Placed", b["created_at"]), ("Closed", _text(b.get("closed_at"))),
    ):  # fmt: skip
        table.add_row(label, escape(str(value)))
    out.print(table)
    if b.get("allocations"):
        won = Table("Round", "Pool", "CH", "Price per CH", title="Compute won")
        for a in b["allocations"]:
            won.add_row(a["round"], a["pool"], _ch(a["ch"]), _dollars(a["price_usd_per_ch"]))
        out.print(won)


@app.command()
def wait(
    bid_id: int,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds (exit 7).")] = None,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between checks.")] = 5.0,
) -> None:
    """Follow a bid until it ends, with a progress bar of its items: exit 0 when it completes, 6 when it ends
    otherwise (failed, expired, cancelled, declined), 7 at the timeout."""
    started = time.monotonic()
    with _client() as client:
        b = client.bid(bid_id)
        if out.is_terminal:
            columns = (TextColumn("Bid {task.fields[bid]}: {task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("items"), TaskProgressColumn(), TextColumn("{task.fields[charged]}"),
                       TimeElapsedColumn())  # fmt: skip
            with Progress(*columns, console=out) as bar:
                task = bar.add_task(b["status"], total=_items_total(b) or None, bid=bid_id, charged="")
                while True:
                    bar.update(task, completed=_items_done(b), total=_items_total(b) or None, description=b["status"],
                               charged=f"{_dollars(b.get('charged_usd'))} charged")  # fmt: skip
                    if _over(b, started, timeout):
                        break
                    time.sleep(interval)
                    b = client.bid(bid_id)
        else:
            # Not a terminal (a log, a pipe): a line each time something changes.
            seen = None
            while True:
                now = (b["status"], _items_done(b), _items_total(b))
                if now != seen:
                    seen = now
                    print(f"bid {bid_id}: {now[0]}, {now[1]}/{now[2]} items done, "
                          f"{_dollars(b.get('charged_usd'))} charged", flush=True)  # fmt: skip
                if _over(b, started, timeout):
                    break
                time.sleep(interval)
                b = client.bid(bid_id)
    if b["status"] == DONE:
        out.print(
            f"Bid {bid_id} completed: {_items_done(b):,} of {_items_total(b):,} items, {_dollars(b.get('charged_usd'))}"
            f" charged. `idlefleet download {bid_id}` fetches the results."
        )
        return
    if b["status"] in ENDED:
        raise Exit(
            EXIT_BID_ENDED, f"Bid {bid_id} ended {b['status']}: {_items_done(b):,} of {_items_total(b):,} items done."
        )
    raise Exit(EXIT_TIMEOUT, f"Bid {bid_id} is still {b['status']} after {timeout:g} s.")


def _over(b: dict, started: float, timeout: float | None) -> bool:
    if b["status"] == DONE or b["status"] in ENDED:
        return True
    return timeout is not None and time.monotonic() - started >= timeout


@app.command()
def download(
    bid_id: int,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The file to write (default: the server's name, here).")
    ] = None,
) -> None:
    """Download a completed bid's results (`.npy` for tensor models, JSON lines for text ones)."""
    target: dict[str, Path] = {}

    def open_file(server_name: str):
        final = output or Path(server_name)
        target["final"], target["part"] = final, final.with_name(final.name + ".part")
        return target["part"].open("wb")

    with _client() as client:
        try:
            _, written = client.bid_result_download(bid_id, open_file)
        except BaseException:
            if "part" in target:
                target["part"].unlink(missing_ok=True)
            raise
    os.replace(target["part"], target["final"])  # a file by that name is always a whole download
    out.print(f"Saved bid {bid_id}'s results to {escape(str(target['final']))} ({written:,} bytes).")


@app.command()
def cancel(bid_id: int, as_json: JsonOption = False) -> None:
    """Cancel a bid: nothing more is bought; you pay for the work validated so far."""
    with _client() as client:
        b = client.bid_cancel(bid_id)
    if as_json:
        return _print_json(b)
    out.print(f"Bid {bid_id} {b['status']}: {_items_done(b):,} of {_items_total(b):,} items done, "
              f"{_dollars(b.get('charged_usd'))} charged.")  # fmt: skip


@app.command("raise-price")
def raise_price(
    bid_id: int,
    max_price: Annotated[str, typer.Option("--max-price", help="The new maximum, dollars per CH.")],
    as_json: JsonOption = False,
) -> None:
    """Raise a bid's maximum price per CH."""
    _decimal(max_price, "--max-price")
    with _client() as client:
        b = client.bid_raise_price(bid_id, max_price)
    if as_json:
        return _print_json(b)
    out.print(f"Bid {bid_id} now pays up to ${b['max_price_usd_per_ch']} per CH.")


def _report(error: ApiError) -> int:
    err.print(f"[red]Error: {escape(error.message)}[/]")
    for field, messages in error.fields.items():
        for message in messages:
            err.print(f"[red]  {escape(field)}: {escape(message)}[/]")
    return exit_code(error.status)


def main() -> None:
    """The console script: runs a command and turns its errors into a message and an exit code."""
    try:
        app()
    except ApiError as error:
        sys.exit(_report(error))
    except Exit as stop:
        err.print(f"[red]{escape(stop.message)}[/]")
        sys.exit(stop.code)
    except config.ConfigError as error:
        err.print(f"[red]{escape(str(error))}[/]")
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        err.print("Interrupted.")
        sys.exit(130)


if __name__ == "__main__":
    main()
