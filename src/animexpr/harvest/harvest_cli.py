"""`animexpr harvest`: options, a progress display per class, and the summary by reason."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
)
from rich.table import Table
from rich.text import Text

from animexpr.cli_common import (
    EXIT_INTERRUPTED,
    JsonOption,
    ProgressBars,
    console,
    err_console,
    get_settings,
    get_state,
    print_json,
)
from animexpr.harvest.policy import DEFAULT_EXCLUDED_TAGS, HarvestOptions, Variant, parse_ratings

if TYPE_CHECKING:  # imported by the command itself, so that the other commands start fast
    from animexpr.harvest.crawl import ClassTally, CrawlSummary

DEFAULT_API_URL = "https://danbooru.donmai.us"


def register(app: typer.Typer) -> None:
    app.command(name="harvest")(harvest)


def harvest(
    ctx: typer.Context,
    class_names: Annotated[
        list[str] | None,
        typer.Option("--class", help="Crawl only this class (repeat for several); default: all classes."),
    ] = None,
    per_class: Annotated[
        int,
        typer.Option(min=0, help="Downloaded posts wanted per class in the store (reruns finish the rest)."),
    ] = 1000,
    rating: Annotated[str, typer.Option(help="Ratings to keep: letters of g,s,q,e, or 'all'.")] = "g,s",
    api_url: Annotated[
        str, typer.Option(envvar="DANBOORU_API_URL", help="Danbooru (or compatible) site.")
    ] = (DEFAULT_API_URL),
    login: Annotated[
        str | None, typer.Option(envvar="DANBOORU_LOGIN", help="Danbooru login name.", show_default=False)
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="DANBOORU_API_KEY", help="Danbooru API key.", show_default=False)
    ] = None,
    rate: Annotated[float, typer.Option(min=0.01, help="API requests per second at most.")] = 1.0,
    download_rate: Annotated[
        float, typer.Option(min=0.01, help="File downloads started per second at most.")
    ] = 2.0,
    downloads: Annotated[int, typer.Option(min=1, max=16, help="Files downloaded at the same time.")] = 4,
    variant: Annotated[
        Variant, typer.Option(help="original (md5-checked) or sample (Danbooru's 850 px JPEG when larger).")
    ] = "original",
    exclude_tag: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-tag", help=f"Skip posts with this tag, besides {', '.join(DEFAULT_EXCLUDED_TAGS)}."
        ),
    ] = None,
    keep_ambiguous: Annotated[
        bool,
        typer.Option(help="Keep posts matching several classes, in the class of the query that found them."),
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option(help="Try failed downloads (md5 mismatch, errors) again.")
    ] = False,
    max_mb: Annotated[
        float, typer.Option(min=0.1, help="Skip files larger than this many megabytes.")
    ] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Crawl Danbooru for each class's tag with `solo`, and download the originals into the store."""
    from animexpr.harvest.client import ClientPolicy, DanbooruClient, HarvestError, credentials_from
    from animexpr.harvest.crawl import Crawler, CrawlSummary

    settings = get_settings(ctx)
    state = get_state(ctx, create_home=True)
    options = HarvestOptions(
        per_class=per_class,
        ratings=parse_ratings(rating),
        variant=variant,
        excluded_tags=frozenset(DEFAULT_EXCLUDED_TAGS).union(exclude_tag or ()),
        keep_ambiguous=keep_ambiguous,
        max_file_bytes=int(max_mb * 1024 * 1024),
        downloads=downloads,
        retry_failed=retry_failed,
    )
    policy = ClientPolicy(rate=rate, download_rate=download_rate, pool_size=downloads + 2)
    credentials = credentials_from(login, api_key)
    names = class_names or list(settings.class_names)
    for name in names:
        settings.class_spec(name)  # unknown names fail here, before any request
    with DanbooruClient(api_url, policy, credentials) as client:
        crawler = Crawler(state.engine, state.store, settings, client, options, names)
        started = time.monotonic()
        try:
            with ProgressBars(
                (BarColumn(), MofNCompleteColumn(), _RateColumn(), _EtaColumn()), transient=False
            ) as bars:
                crawler.on_progress = _ClassProgress(bars)
                summary = crawler.run()
        except HarvestError:
            seconds = time.monotonic() - started
            done = CrawlSummary(crawler.tallies, api_requests=client.api_requests, seconds=seconds)
            _show_summary(summary_dict(done), as_json)  # what was done
            raise
    _show_summary(summary_dict(summary), as_json)
    if summary.interrupted:
        err_console.print("interrupted; finished work is kept; run the same command again to continue")
        raise typer.Exit(EXIT_INTERRUPTED)


class _RateColumn(ProgressColumn):
    """Downloads per second since the run started, for this class."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate", 0.0)
        return Text(f"{rate:5.1f}/s" if rate else "  -  /s", style="progress.data.speed")


class _EtaColumn(ProgressColumn):
    """Time left at that rate ('-' before the first download, or when nothing is left to wait for)."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate", 0.0)
        left = (task.total or 0) - task.completed
        if left <= 0 or task.fields.get("exhausted"):
            return Text("done" if left <= 0 else "exhausted", style="progress.remaining")
        if not rate:
            return Text("-:--:--", style="progress.remaining")
        seconds = int(left / rate)
        return Text(
            f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}", style="progress.remaining"
        )


class _ClassProgress:
    """One bar per class: downloaded of the target, with found / skipped / failed, rate and ETA."""

    def __init__(self, bars: ProgressBars) -> None:
        self.bars = bars
        self.started = time.monotonic()

    def __call__(self, tally: ClassTally) -> None:
        self.bars.update(
            tally.name,
            tally.have,
            max(tally.total, tally.have),
            f"found {tally.found}  skipped {tally.skipped}  failed {tally.failed}",
            rate=tally.downloaded / max(1e-6, time.monotonic() - self.started),
            exhausted=tally.exhausted,
        )


def summary_dict(summary: CrawlSummary) -> dict[str, Any]:
    """What the summary shows, and `--json` prints: per class, the reasons, the totals."""
    classes = {
        tally.name: {
            "target": tally.target,
            "had": tally.already,
            "found": tally.found,
            "downloaded": tally.downloaded,
            "skipped": tally.skipped,
            "failed": tally.failed,
            "have": tally.have,
            "left": max(0, tally.target - tally.have),
            "exhausted": tally.exhausted,
        }
        for tally in summary.classes.values()
    }
    return {
        "classes": classes,
        "reasons": dict(sorted(summary.reasons.items())),
        "failed": sum(counts["failed"] for counts in classes.values()),
        "api_requests": summary.api_requests,
        "seconds": round(summary.seconds, 3),
        "interrupted": summary.interrupted,
    }


def _show_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    columns = ("target", "had", "found", "downloaded", "skipped", "failed", "have")
    table = Table("class", *columns, "left")
    for name, counts in summary["classes"].items():
        left = "exhausted" if counts["exhausted"] and counts["left"] else str(counts["left"])
        table.add_row(name, *(str(counts[key]) for key in columns), left)
    console.print(table)
    if summary["reasons"]:
        text = ", ".join(f"{reason} {count}" for reason, count in summary["reasons"].items())
        console.print(f"skipped or failed by reason: {text}")
    if summary["failed"]:
        console.print(
            f"{summary['failed']} failed downloads: `animexpr harvest --retry-failed` tries them again"
        )
    took = f" in {summary['seconds']:.1f} s" if summary["seconds"] else ""
    console.print(f"{summary['api_requests']} API requests{took}")
