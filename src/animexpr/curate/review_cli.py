"""`animexpr review`: the review page, and the same queue from the command line."""

from __future__ import annotations

import getpass
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from animexpr.cli_common import choices, console, err_console, get_state, print_json
from animexpr.curate.defaults import (
    BULK_ACCEPT_REVIEWER,
    CSV_IMPORT_REVIEWER,
    DEFAULT_GRID_SIZE,
    DEFAULT_LEASE_SECONDS,
    STATE_FILTER_NAMES,
)

if TYPE_CHECKING:
    from animexpr.curate.manual_crop import ManualCropResult
    from animexpr.curate.review import LeasedCrops
    from animexpr.curate.review_csv import LineError


review_app = typer.Typer(
    help="Review the crops: the keyboard-first page (no subcommand), progress, CSV export and import, "
    "bulk accept, undo, reviewer tokens.",
)

ReviewerOption = Annotated[
    str | None,
    typer.Option("--reviewer", help="Who decides (default: your login name).", show_default=False),
]


def default_reviewer() -> str:
    try:
        name = getpass.getuser()
    except (OSError, KeyError):
        return "reviewer"
    name = re.sub(r"[^A-Za-z0-9_.@:+-]", "-", name).lstrip("-_.@:+")[:64]
    return name or "reviewer"


@review_app.callback(invoke_without_command=True)
def review(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Address to listen on; anything but loopback needs reviewer tokens.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (1-65535).")] = 8765,
    reviewer: Annotated[
        str | None,
        typer.Option(
            "--reviewer",
            help="Who decides when the page names nobody (default: your login name); with --token, the "
            "reviewer that token logs in as.",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="ANIMEXPR_REVIEW_TOKEN",
            help="A shared token (12+ characters) that logs in as --reviewer. Token mode, where each "
            "request needs a token and is recorded as the token's reviewer, is on when --token is given "
            "or any reviewer has a token of their own (`review add-reviewer`); it is required off "
            "loopback. Without it (loopback only) the page names its reviewer freely.",
            show_default=False,
        ),
    ] = None,
    lease_minutes: Annotated[
        float, typer.Option(help="How long a crop shown to one reviewer is kept from the others.")
    ] = DEFAULT_LEASE_SECONDS / 60,
    grid_size: Annotated[
        int,
        typer.Option(
            help="The most crops on a grid page (1-200); the page shows the whole rows that fit the window."
        ),
    ] = DEFAULT_GRID_SIZE,
) -> None:
    """Serve the review page (every key press is saved at once; Ctrl-C stops the server)."""
    if ctx.invoked_subcommand is not None:
        return
    from animexpr.curate.review import ReviewError, ReviewerTokens, check_page_reviewer
    from animexpr.curate.review_app import ReviewAppConfig, bind_socket, listen_warning, serve

    state = get_state(ctx)
    name = check_page_reviewer(reviewer or default_reviewer())
    token = token or None  # ANIMEXPR_REVIEW_TOKEN="" means no token
    if not 1 <= grid_size <= 200:
        raise ReviewError("--grid-size: between 1 and 200")
    if not (math.isfinite(lease_minutes) and 0 < lease_minutes <= 24 * 60):
        raise ReviewError("--lease-minutes: more than 0 and at most 1440 (a day)")
    engine = state.engine
    reviewer_tokens = ReviewerTokens(engine).any()
    warning = listen_warning(host, token, reviewer_tokens)
    config = ReviewAppConfig(
        reviewer=name, token=token, lease_seconds=max(1, round(lease_minutes * 60)), grid_size=grid_size
    )
    sock = bind_socket(host, port)
    if warning:
        err_console.print(f"[yellow]warning:[/] {warning}")
    shown_host = f"[{host}]" if ":" in host else host
    port = sock.getsockname()[1]
    if token or reviewer_tokens:
        console.print(f"review page: [bold]http://{shown_host}:{port}/[/]")
        console.print(
            "the page asks each browser once for a reviewer token; decisions are recorded as its owner"
        )
        if token:
            console.print(f"the --token logs in as reviewer {name}")
    else:
        console.print(f"review page: [bold]http://{shown_host}:{port}/[/]  (reviewer {name})")
    console.print("every decision is saved as you make it; Ctrl-C stops the server")
    serve(engine, state.settings, config, sock)


@review_app.command("add-reviewer")
def add_reviewer(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The reviewer's name, as recorded on their decisions.")],
) -> None:
    """Give a reviewer a new token of their own and print it (once: only its hash is kept).

    Naming an existing reviewer replaces their token: the old one stops working at once, also in a server
    that is running. The first reviewer with a token turns token mode on for servers started afterwards.
    Only the token goes to standard output, so `TOKEN=$(animexpr review add-reviewer alice)` works.
    """
    from animexpr.curate.review import ReviewerTokens

    state = get_state(ctx)
    token, replaced = ReviewerTokens(state.engine).add(name)
    what = "replaced the token of" if replaced else "added"
    err_console.print(
        f"{what} reviewer {name}; their token (shown only now, hand it over privately):", highlight=False
    )
    print(token)
    err_console.print(
        "they enter it on the review page's login form, or send it as 'Authorization: Bearer TOKEN'",
        highlight=False,
    )


@review_app.command("reviewers")
def reviewers(ctx: typer.Context) -> None:
    """List the reviewers that have a token of their own."""
    from animexpr.curate.review import ReviewerTokens

    rows = ReviewerTokens(get_state(ctx).engine).names()
    if not rows:
        console.print("no reviewer has a token (the page names its reviewer freely, on loopback only)")
        return
    table = Table("reviewer", "token since")
    for name, created_at in rows:
        table.add_row(name, created_at.strftime("%Y-%m-%d %H:%M UTC"))
    console.print(table)


@review_app.command("remove-reviewer")
def remove_reviewer(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The reviewer whose token to delete.")]
) -> None:
    """Delete a reviewer's token: it stops working at once; their recorded decisions stay."""
    from animexpr.curate.review import ReviewError, ReviewerTokens

    if not ReviewerTokens(get_state(ctx).engine).remove(name):
        raise ReviewError(f"no reviewer named {name!r} has a token (see `animexpr review reviewers`)")
    console.print(f"removed the token of reviewer {name}")


@review_app.command("stats")
def stats(
    ctx: typer.Context,
    reviewer: Annotated[
        str | None,
        typer.Option(
            "--reviewer",
            help="The ETA at this reviewer's pace (default: at the pace of everyone who reviewed in the "
            "last 7 days, side by side).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Progress per class, decisions and pace per reviewer, and the ETA at the reviewers' recorded pace."""
    from animexpr.curate.review import ReviewQueue, check_reviewer
    from animexpr.curate.review_stats import queue_stats

    state = get_state(ctx)
    queue = ReviewQueue(state.engine, state.settings.class_names)
    report = queue_stats(queue, check_reviewer(reviewer) if reviewer else None)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table("class", "pending", "accepted", "rejected", "total", "done", "ETA")
    for name, counts in [*report["classes"].items(), ("all", report["total"])]:
        table.add_row(
            name,
            *(str(counts[key]) for key in ("pending", "accepted", "rejected", "total")),
            f"{100 * counts['done'] / counts['total']:.0f}%" if counts["total"] else "-",
            _duration(counts["eta_seconds"]),
        )
    console.print(table)
    console.print(_pace_line(report), highlight=False)
    if report["reviewers"]:
        reviewers = Table("reviewer", "events", "last decision", "pace")
        for row in report["reviewers"]:
            pace = row["pace_seconds"]
            reviewers.add_row(
                row["reviewer"], str(row["events"]), row["last_at"] or "-", f"{pace:.1f} s" if pace else "-"
            )
        console.print(reviewers)


def _pace_line(report: dict[str, Any]) -> str:
    """Whose pace the ETA is at, in words."""
    from animexpr.curate.review_stats import TEAM_ACTIVE_DAYS

    pace = report["pace_seconds"]
    who = report["reviewer"]
    if who is not None:
        return (
            f"{who}'s pace: {pace:.1f} s per crop"
            if pace
            else f"{who} has no recent pace yet (ETA needs a few decisions)"
        )
    if not pace:
        return (
            f"no reviewer has a recent pace (the ETA needs a few decisions by someone in the last "
            f"{TEAM_ACTIVE_DAYS} days)"
        )
    paces = {row["reviewer"]: row["pace_seconds"] for row in report["reviewers"]}
    names = [f"{name} ({paces[name]:.1f} s per crop)" for name in report["pace_reviewers"]]
    if len(names) == 1:
        return f"ETA at the pace of {names[0]}"
    return f"ETA at the pace of {', '.join(names[:-1])} and {names[-1]} side by side: {pace:.1f} s per crop"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "-"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


if TYPE_CHECKING:
    StateFilterName = str
else:
    StateFilterName = choices(STATE_FILTER_NAMES)  # the names of the queue's STATE_FILTERS


@review_app.command("export")
def export(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV file to write (replaced atomically).", dir_okay=False)],
    state_name: Annotated[StateFilterName, typer.Option("--state", help="Which crops.")] = "any",
    label: Annotated[str | None, typer.Option(help="Only this class.", show_default=False)] = None,
) -> None:
    """Write one line per crop: id, hash, post, label, state, score, size, cluster, last reviewer, file."""
    from animexpr.curate.review import QueueFilter, ReviewQueue
    from animexpr.curate.review_csv import export_csv

    state = get_state(ctx)
    queue = ReviewQueue(state.engine, state.settings.class_names)
    queue_filter = QueueFilter.from_mapping({"state": state_name, "label": label}, state.settings.class_names)
    written = export_csv(queue, file, queue_filter)
    console.print(f"wrote {written} crops to {file}")


@review_app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="UTF-8 CSV with crop_id or sha256, and state or decision.")],
    reviewer: Annotated[str, typer.Option(help="Recorded as the reviewer of these decisions.")] = (
        CSV_IMPORT_REVIEWER
    ),
) -> None:
    """Apply decisions from a CSV (by crop id or file hash); running it again changes nothing.

    One file is one batch, named import- and the start of the file's sha256: an import that was
    interrupted and run again applies only what is missing, under the same batch, and `review undo
    --reviewer` takes the whole import back. Exit status 1 when a line could not be applied; the other lines
    are applied all the same.
    """
    from animexpr.curate.review import ReviewQueue, check_reviewer
    from animexpr.curate.review_csv import import_csv

    state = get_state(ctx)
    queue = ReviewQueue(state.engine, state.settings.class_names)
    report = import_csv(queue, file, check_reviewer(reviewer))
    _print_line_errors(file, report.errors)
    console.print(
        f"{report.lines} lines: {report.applied} decisions applied, {report.unchanged} already so, "
        f"{len(report.errors)} bad lines (batch {report.batch_id})"
    )
    if report.errors:
        raise typer.Exit(1)


@review_app.command("accept")
def accept(
    ctx: typer.Context,
    label: Annotated[str | None, typer.Option(help="Only this class.", show_default=False)] = None,
    min_score: Annotated[
        float | None, typer.Option(help="Only crops with at least this detection score.", show_default=False)
    ] = None,
    min_size: Annotated[
        int | None,
        typer.Option(help="Only faces at least this large (px in the source).", show_default=False),
    ] = None,
    reviewer: Annotated[str, typer.Option(help="Recorded as the reviewer.")] = BULK_ACCEPT_REVIEWER,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count them.")] = False,
) -> None:
    """Accept all pending crops of a class and/or above a score, as one batch (`review undo` undoes it)."""
    from animexpr.curate.review import QueueFilter, ReviewError, ReviewQueue, check_label, check_reviewer

    if label is None and min_score is None and min_size is None:
        raise ReviewError("say which crops to accept: --label, --min-score and/or --min-size")
    state = get_state(ctx)
    class_names = state.settings.class_names
    queue_filter = QueueFilter(
        labels=(check_label(label, class_names),) if label else (),
        min_score=min_score,
        min_size=min_size,
    )
    queue = ReviewQueue(state.engine, class_names)
    count = queue.bulk_accept(queue_filter, check_reviewer(reviewer), dry_run=dry_run)
    if dry_run:
        console.print(f"{count} pending crops match; nothing changed (--dry-run)", highlight=False)
    else:
        console.print(f"accepted {count} crops as reviewer {reviewer}", highlight=False)
    leased = queue.leased_by_others(queue_filter, reviewer)
    if leased.count:
        console.print(_leased_line(leased), highlight=False)


def _print_line_errors(file: Path | None, errors: list[LineError], most: int = 100) -> None:
    """The bad lines of a CSV, one per line on standard error (the first `most` of them)."""
    for error in errors[:most]:
        err_console.print(f"{file}:{error.line}: {error.message}", highlight=False, soft_wrap=True)
    if len(errors) > most:
        err_console.print(f"... and {len(errors) - most} more bad lines")


def _leased_line(leased: LeasedCrops) -> str:
    """Why some matching crops were left alone: review pages hold them (a closed page's until it runs out)."""
    from datetime import UTC, datetime

    assert leased.until is not None
    minutes = max(1, math.ceil((leased.until - datetime.now(UTC)).total_seconds() / 60))
    holders = ", ".join(f"{name}: {count}" for name, count in leased.by_reviewer.items())
    return (
        f"{leased.count} more pending crops match but are held by review pages ({holders}) until "
        f"{leased.until:%H:%M} UTC (in {minutes} min), so they were left alone; a closed page's crops are "
        "free again then: run this again after that"
    )


@review_app.command("undo")
def undo(ctx: typer.Context, reviewer: ReviewerOption = None) -> None:
    """Take back the reviewer's latest decision, or their latest batch (grid page, bulk accept, import)."""
    from animexpr.curate.review import ReviewQueue, check_reviewer

    state = get_state(ctx)
    name = check_reviewer(reviewer or default_reviewer())
    results = ReviewQueue(state.engine, state.settings.class_names).undo_last(name)
    if not results:
        console.print(f"{name} has no decision left to undo")
        return
    crops = ", ".join(str(result.crop_id) for result in results[:10])
    more = f" and {len(results) - 10} more" if len(results) > 10 else ""
    console.print(f"undid {len(results)} decisions of {name} (crops {crops}{more})")


def crop_by_hand(
    ctx: typer.Context,
    box: tuple[int, int, int, int] | None,
    boxes_file: Path | None,
    reviewer: str | None,
    size: int | None,
    as_json: bool = False,
) -> None:
    """`animexpr crop --box POST X Y S` / `--boxes FILE.csv`: hand crops, accepted at once as the reviewer.

    `size` is the crop side asked for on the command line (None: that of the store's latest detected crop).
    """
    from animexpr.curate.manual_crop import (
        BOX_COLUMNS,
        ManualCropError,
        ManualCropper,
        parse_box,
        read_boxes_csv,
    )
    from animexpr.curate.review import check_reviewer

    if box is not None and boxes_file is not None:
        raise ManualCropError("crop: give either --box or --boxes, not both")
    state = get_state(ctx)
    name = check_reviewer(reviewer or default_reviewer())
    cropper = ManualCropper(state.engine, state.store, state.settings.class_names)
    results: list[ManualCropResult]
    errors: list[LineError] = []
    if box is not None:
        # Checked as a CSV line is: the post a row id, the numbers within range.
        results, lines = [cropper.crop(parse_box(dict(zip(BOX_COLUMNS, box, strict=True))), name, size)], 1
    else:
        assert boxes_file is not None
        parsed, errors = read_boxes_csv(boxes_file)
        report = cropper.crop_many(parsed, name, size)
        results, lines = report.results, report.lines + len(errors)
        errors = sorted([*errors, *report.errors], key=lambda error: error.line)
    if as_json:
        print_json(
            {
                "reviewer": name,
                "lines": lines,
                "crops": [result.to_dict() for result in results],
                "errors": [{"line": error.line, "message": error.message} for error in errors],
            }
        )
    else:
        _print_hand_crops(results, errors, boxes_file, name)
    if errors:
        raise typer.Exit(1)


def _print_hand_crops(
    results: list[ManualCropResult], errors: list[LineError], boxes_file: Path | None, reviewer: str
) -> None:
    _print_line_errors(boxes_file, errors)
    for result in results[:20]:
        what = "accepted" if result.changed else "unchanged (this square was accepted already)"
        replaced = (
            f"; replaces hand crop {', '.join(f'#{r.crop_id}' for r in result.replaced)}"
            if result.replaced
            else ""
        )
        console.print(f"post {result.post_id}: crop #{result.crop_id} {what}{replaced}", highlight=False)
    if boxes_file is not None:
        applied = sum(result.changed for result in results)
        console.print(
            f"{applied} hand crops accepted as {reviewer} in one batch (`animexpr review undo --reviewer "
            f"{reviewer}` takes them back), {len(results) - applied} unchanged, {len(errors)} bad lines",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
