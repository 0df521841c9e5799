import base64
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from coins.cli import app
from coins.train.report.figures import PNG_SIGNATURE
from coins.train.report.grid import (
    Tile,
    grid_shape,
    nearest_others,
    pick_queries,
    retrieval_grid,
    retrieval_tiles,
)
from coins.train.report.runs import report

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
    """Two tiny run directories: copies of the session's tiny run under two names."""
    base = tmp_path_factory.mktemp("runs")
    for name in ("coins-a", "coins-b"):
        shutil.copytree(tiny_run, base / name)
    return [base / "coins-a", base / "coins-b"]


class Page(HTMLParser):
    """Collects the img sources and link targets of a page, and checks tags are balanced."""

    VOID = frozenset({"img", "meta", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, str] = {}  # alt -> src
        self.links: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images[a["alt"]] = a["src"]
        elif tag == "a":
            self.links.append(a["href"])
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"unbalanced </{tag}>"


def check_png(path) -> None:
    assert path.read_bytes().startswith(PNG_SIGNATURE), path
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"


def test_report_writes_valid_pngs_and_one_self_contained_page(runs, tmp_path) -> None:
    page = report(runs, tmp_path / "rep", queries=3, k=2)
    pngs = sorted(p.name for p in page.parent.glob("*.png"))
    expected = ["curves.png", "recall.png"]
    expected += [f"{kind}-coins-{r}.png" for kind in ("embedding", "retrieval") for r in "ab"]
    assert pngs == sorted(expected)
    for name in pngs:
        check_png(page.parent / name)
    parser = Page()
    parser.feed(page.read_text())
    parser.close()
    assert parser.open == []
    assert sorted(parser.images) == pngs and sorted(parser.links) == pngs
    for name, src in parser.images.items():  # every figure is inline, byte for byte
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :]) == (page.parent / name).read_bytes()


def test_report_cli_names_the_page_and_a_missing_checkpoint(runs, tmp_path) -> None:
    result = runner.invoke(app, ["report", str(runs[0]), "-o", str(tmp_path / "r"),
                                 "--queries", "2", "--k", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "index.html").is_file() and "index.html" in result.output
    broken = tmp_path / "broken"
    shutil.copytree(runs[0], broken)
    (broken / "checkpoint.pt").unlink()
    result = runner.invoke(app, ["report", str(broken), "-o", str(tmp_path / "r2")])
    assert result.exit_code == 2
    assert "no checkpoint.pt" in result.output


def test_nearest_others_matches_a_brute_force_loop() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = np.array([0, 7, 29])
    got = nearest_others(x, queries, 5)
    for q, row in zip(queries, got, strict=True):
        others = sorted((j for j in range(30) if j != q), key=lambda j: (-float(x[q] @ x[j]), j))
        assert list(row) == others[:5]


def test_tiles_are_green_where_the_fine_label_matches_and_red_where_not() -> None:
    labels = np.array([0, 0, 1, 1, -1, 0])
    queries = np.array([0, 2])
    I = np.array([[1, 2, 4], [3, 5, 0]])  # noqa: E741 (FAISS naming)
    tiles = retrieval_tiles(queries, I, labels)
    assert grid_shape(tiles) == (2, 4)
    assert [(t.row, t.col, t.index, t.colour) for t in tiles] == [
        (0, 0, 0, "tab:blue"),
        (0, 1, 1, "tab:green"),  # label 0 == 0
        (0, 2, 2, "tab:red"),  # label 1 != 0
        (0, 3, 4, "grey"),  # unlabelled
        (1, 0, 2, "tab:blue"),
        (1, 1, 3, "tab:green"),
        (1, 2, 5, "tab:red"),
        (1, 3, 0, "tab:red"),
    ]


def test_the_grid_figure_has_one_framed_axes_per_tile() -> None:
    labels = np.arange(12) % 3
    queries = pick_queries(labels, 4, seed=1)
    assert len(set(queries)) == 4
    x = np.random.default_rng(1).normal(size=(12, 3)).astype(np.float32)
    tiles = retrieval_tiles(queries, nearest_others(x, queries, 3), labels)
    assert len(tiles) == 4 * 4 and grid_shape(tiles) == (4, 4)
    figure = retrieval_grid(tiles, lambda i: Image.new("RGB", (8, 8), (i * 20, 0, 0)))
    assert len(figure.axes) == 16
    frames = {(t.row, t.col): t.colour for t in tiles}
    from matplotlib.colors import to_rgba

    for ax in figure.axes:
        spec = ax.get_subplotspec()
        colour = frames[(spec.rowspan.start, spec.colspan.start)]
        assert ax.spines["left"].get_edgecolor() == to_rgba(colour)


def test_a_tile_knows_its_colour() -> None:
    assert Tile(0, 1, 5, "miss").colour == "tab:red"


def test_curves_fall_back_to_steps_unless_every_log_has_epochs() -> None:
    from coins.train.report.figures import training_curves

    steps = [{"event": "step", "epoch": 1, "step": s, "loss": 3.0 - s} for s in range(3)]
    epochs = [{"event": "epoch", "epoch": 1, "step": 3, "loss": 1.5}]
    evals = [{"event": "eval", "epoch": 1, "fine": {"recall@1": 0.5}}]
    both = training_curves({"a": steps + epochs + evals, "b": steps + epochs})
    assert both.axes[0].get_xlabel() == "epoch"
    assert len(both.axes[1].lines) == 1  # only run a was evaluated
    mixed = training_curves({"a": steps + epochs, "b": steps})
    assert mixed.axes[0].get_xlabel() == "step"
    assert [len(line.get_xdata()) for line in mixed.axes[0].lines] == [3, 3]
