"""`animexpr crop --box POST X Y S` and `crop --boxes FILE.csv`: hand crops from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from review.manual_testdata import add_missed_post
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.curate.crop import Square, cut_square, resize_square
from animexpr.curate.review_cli import default_reviewer
from animexpr.db.models import Crop, ReviewEvent
from animexpr.db.session import session_scope
from animexpr.images import decode_image
from animexpr.store import FileStore

runner = CliRunner()


@pytest.fixture
def posts(engine: Engine, store: FileStore) -> dict[int, np.ndarray]:
    return {post_id: add_missed_post(engine, store, post_id) for post_id in (1, 2, 3)}


def animexpr(home: Path, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr); an error the entry point would print as one line is in stderr too."""
    result = runner.invoke(app, ["--home", str(home), *args], env={"COLUMNS": "200"})
    shown_error = "" if isinstance(result.exception, SystemExit | None) else f"{result.exception}\n"
    return result.exit_code, result.stdout, result.stderr + shown_error


def hand_crops(engine: Engine) -> list[Crop]:
    with session_scope(engine) as session:
        return list(session.scalars(select(Crop).where(Crop.detector == "manual").order_by(Crop.id)))


def events(engine: Engine) -> list[ReviewEvent]:
    with session_scope(engine) as session:
        return list(session.scalars(select(ReviewEvent).order_by(ReviewEvent.id)))


def test_box_makes_one_accepted_hand_crop_that_review_undo_takes_back(
    home: Path, engine: Engine, store: FileStore, posts: dict[int, np.ndarray]
) -> None:
    code, out, err = animexpr(home, "crop", "--box", "2", "100", "50", "200", "--reviewer", "carol")
    assert code == 0, err
    [crop] = hand_crops(engine)
    assert f"post 2: crop #{crop.id} accepted" in out
    assert (crop.post_id, crop.state, crop.size_px, crop.detector_settings["reviewer"]) == (
        2,
        "accepted",
        128,
        "carol",
    )
    expected = resize_square(cut_square(posts[2], Square(100, 50, 200)), 128)
    assert np.array_equal(decode_image(store.abspath(crop.file_relpath)).rgb, expected)
    assert [(e.crop_id, e.decision, e.reviewer) for e in events(engine)] == [(crop.id, "crop", "carol")]
    # The same square again changes nothing; --size on the command line is taken as given.
    code, out, _ = animexpr(home, "crop", "--box", "2", "100", "50", "200", "--reviewer", "carol")
    assert "unchanged" in out
    code, out, err = animexpr(home, "crop", "--box", "3", "0", "0", "300", "--size", "256")
    assert code == 0, err
    assert hand_crops(engine)[-1].size_px == 256
    assert events(engine)[-1].reviewer == default_reviewer()  # as `review undo` picks it by default

    code, out, err = animexpr(home, "review", "undo", "--reviewer", "carol")
    assert code == 0, err
    assert hand_crops(engine)[0].state == "rejected"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--box", "1", "500", "0", "200"],
            "post 1: the square x=500 y=0 size=200 reaches outside the 640x480 picture",
        ),
        (["--box", "1", "0", "0", "20"], "size 20 is under the minimum 64 px"),
        (["--box", "9", "0", "0", "100"], "post 9: no such post in the store"),
        (["--box", "1", "0", "0", "100", "--boxes", "x.csv"], "give either --box or --boxes, not both"),
        (["--box", "1", "0", "0", "100", "--reviewer", "no spaces"], "reviewer name 'no spaces'"),
        (["--box", "0", "0", "0", "100"], "post_id 0: expected a post id (a whole number from 1 to"),
        (["--box", str(2**63), "0", "0", "100"], "expected a post id (a whole number from 1 to"),
        (["--box", "1", str(10**12), "0", "100"], "x 1000000000000: expected a whole number of pixels"),
        (["--box", "1", "0", "0", "100", "--size", "0"], "size 0: hand crops are at least 8 px"),
        (["--box", "1", "0", "0", "100", "--size", "7"], "size 7: hand crops are at least 8 px"),
        (["--boxes", "x.csv", "--size", "-5"], "size -5: hand crops are at least 8 px"),
    ],
)
def test_a_bad_box_is_one_line_and_writes_nothing(
    home: Path,
    engine: Engine,
    posts: dict[int, np.ndarray],
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(home)
    Path("x.csv").write_text("post_id,x,y,size\n1,0,0,100\n")
    code, _, err = animexpr(home, "crop", *args)
    assert code == 1
    assert message in " ".join(err.split())
    assert "Traceback" not in err
    assert hand_crops(engine) == []
    assert events(engine) == []


def test_boxes_applies_the_good_lines_in_one_batch_and_names_the_bad_ones(
    home: Path, engine: Engine, posts: dict[int, np.ndarray], tmp_path: Path
) -> None:
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("post_id,x,y,size\n1,0,0,100\n2,-4,0,100\n3,10,10,abc\n3,200,100,250\n42,0,0,100\n")
    code, out, err = animexpr(home, "crop", "--boxes", str(boxes), "--reviewer", "dana")
    assert code == 1
    lines = err.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{boxes}:3", f"{boxes}:4", f"{boxes}:6"]
    assert "reaches outside" in lines[0]
    assert "size 'abc': expected a whole number of pixels" in lines[1]
    assert "post 42: no such post" in lines[2]
    assert "2 hand crops accepted as dana in one batch" in out
    assert "3 bad lines" in out
    assert sorted(c.post_id for c in hand_crops(engine)) == [1, 3]
    assert len({e.batch_id for e in events(engine)}) == 1
    code, out, _ = animexpr(home, "review", "undo", "--reviewer", "dana")
    assert "undid 2 decisions" in out
    assert {c.state for c in hand_crops(engine)} == {"rejected"}


def test_boxes_json_and_a_file_without_the_header(
    home: Path, engine: Engine, posts: dict[int, np.ndarray], tmp_path: Path
) -> None:
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("post_id,x,y,size\n1,0,0,100\n")
    code, out, err = animexpr(home, "crop", "--boxes", str(boxes), "--reviewer", "dana", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["errors"] == []
    assert [(c["post_id"], c["changed"]) for c in report["crops"]] == [(1, True)]
    boxes.write_text("1,0,0,100\n")
    code, _, err = animexpr(home, "crop", "--boxes", str(boxes))
    assert code == 1
    assert "the first line must name the columns post_id,x,y,size" in err
