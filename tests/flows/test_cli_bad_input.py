"""The CLI as a newcomer meets it: every bad input is one line that says what is wrong, exit code 2, and the store
(or the folder where a mistyped store would be) is left exactly as it was: same files, same bytes.

These tests need no Prefect server and no model: each command stops before any work.
"""

import hashlib
import re
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()
HINT = "(`sam-engine ingest` or `sam-engine model add` creates a store)"
EXTENSIONS = ".png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp"


def listing(root: Path) -> dict[str, str]:
    """{path relative to root: sha256 of its bytes, or "dir" for a folder} of everything under root."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def invoke(args: list[str], unchanged: Path):
    """Run the CLI and check that nothing under ``unchanged`` was created, changed or removed."""
    before = listing(unchanged)
    result = runner.invoke(app, args)
    assert listing(unchanged) == before, result.output
    return result


def reader_commands(tmp_path: Path) -> list[list[str]]:
    """Every command that reads a store, with arguments that would otherwise be valid enough to start."""
    image = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(image)
    gt = str(tmp_path / "gt.json")
    return [
        ["query", "images"],
        ["query", "masks"],
        ["query", "models"],
        ["query", "rounds"],
        ["export", "coco", str(tmp_path / "out.json")],
        ["export", "sa1b", str(tmp_path / "out")],
        ["round", "--stage", "fully_automatic", "--round", "0"],
        ["train", "--round", "0"],
        ["eval", gt],
        ["calibrate", gt],
        ["embed"],
        ["segment", str(image), "--out", str(tmp_path / "overlay.png")],
        ["upgrade"],
    ]


def test_a_missing_store_is_an_error_for_every_reading_command_and_no_folder_appears(tmp_path):
    missing = tmp_path / "mistyped-store"
    for url in (str(missing), missing.as_uri()):
        for args in reader_commands(tmp_path):
            result = invoke([*args, "--store", url], unchanged=tmp_path)
            assert result.exit_code == 2, (args, result.output)
            assert result.output == f"error: no store at {url}: no such folder {HINT}\n", args
            assert not missing.exists()


def test_a_folder_that_is_not_a_store_is_an_error_and_stays_empty(tmp_path):
    folder = tmp_path / "holiday-photos"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a store")
    for args in reader_commands(tmp_path):
        result = invoke([*args, "--store", str(folder)], unchanged=tmp_path)
        assert result.exit_code == 2, (args, result.output)
        assert (
            result.output == f"error: no store at {folder}: no images, models or masks table in it {HINT}\n"
        )


def test_a_file_given_as_the_store_is_an_error(tmp_path):
    afile = tmp_path / "store.parquet"
    afile.write_bytes(b"PAR1")
    result = invoke(["query", "images", "--store", str(afile)], unchanged=tmp_path)
    assert result.exit_code == 2
    assert result.output == f"error: no store at {afile}: a file, not a folder {HINT}\n"


def test_an_unknown_protocol_names_it_and_lists_the_known_ones(tmp_path):
    known = ", ".join(fsspec.available_protocols())
    url = f"fiel://{tmp_path}/store"
    expected = f"error: unknown protocol 'fiel' in {url}; known protocols: {known}\n"
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    creators = [["ingest", str(images)], ["model", "add", "v1", "tiny", str(images / "a.png")]]
    for args in [*reader_commands(tmp_path), *creators]:
        result = invoke([*args, "--store", url], unchanged=tmp_path)
        assert result.exit_code == 2, (args, result.output)
        assert result.output == expected, args
        assert "Traceback" not in result.output


def test_a_store_that_exists_is_read_as_before(engine):
    result = runner.invoke(app, ["query", "models", "--store", engine["store"]])
    assert result.exit_code == 0, result.output
    assert engine["model"] in result.output
    result = runner.invoke(app, ["query", "images", "--store", engine["store"]])
    assert result.exit_code == 0 and result.output == "no images\n"


# ---- ingest --------------------------------------------------------------------------------------------------------


@pytest.fixture()
def files(tmp_path) -> Path:
    """A folder of inputs a newcomer might point ingest at, and no store yet."""
    root = tmp_path / "inputs"
    (root / "empty").mkdir(parents=True)
    (root / "text").mkdir()
    (root / "text" / "notes.txt").write_text("hello")
    (root / "text" / "readme.md").write_text("hello")
    (root / "bad").mkdir()
    (root / "bad" / "letter.png").write_text("a text file with an image's name")
    (root / "bad" / "zero.jpg").write_bytes(b"")
    good = root / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    (root / "bad" / "cut.png").write_bytes(data[: len(data) // 2])  # a download that stopped half-way
    return root


def test_ingest_of_an_empty_folder_fails_and_creates_no_store(files, tmp_path):
    store = tmp_path / "store"
    folder = files / "empty"
    result = invoke(["ingest", str(folder), "--store", str(store)], unchanged=tmp_path)
    assert result.exit_code == 2
    assert result.output == f"error: no image registered from {folder}: folder {folder} holds no files\n"


def test_ingest_of_a_glob_that_matches_nothing_fails(files, tmp_path):
    pattern = str(files / "*.jpg")
    result = invoke(["ingest", pattern, "--store", str(tmp_path / "store")], unchanged=tmp_path)
    assert result.exit_code == 2
    assert result.output == f"error: no image registered from {pattern}: {pattern} matches no files\n"


def test_ingest_of_a_folder_without_image_files_says_which_extensions_count(files, tmp_path):
    folder = files / "text"
    result = invoke(["ingest", str(folder), "--store", str(tmp_path / "store")], unchanged=tmp_path)
    assert result.exit_code == 2
    assert result.output == (
        f"error: no image registered from {folder}: folder {folder} holds 2 files, none ending in {EXTENSIONS}\n"
    )


def test_ingest_of_only_unreadable_files_fails_with_a_reason_per_file_and_a_count_per_reason(files, tmp_path):
    folder, missing = files / "bad", files / "missing.png"
    result = invoke(
        ["ingest", str(folder), str(missing), "--store", str(tmp_path / "store")], unchanged=tmp_path
    )
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"skipped {(folder / 'cut.png').as_uri()}: truncated or damaged image (image file is truncated)",
        f"skipped {(folder / 'letter.png').as_uri()}: not an image PIL can read",
        f"skipped {(folder / 'zero.jpg').as_uri()}: empty file",
        f"skipped {missing.as_uri()}: no such file or folder",
        f"error: no image registered from {folder} {missing}: 4 files skipped (1 truncated or damaged image, "
        "1 not an image PIL can read, 1 empty file, 1 no such file or folder)",
    ]
    assert "BytesIO" not in result.output


def test_ingest_with_an_empty_split_fails_before_reading(files, tmp_path):
    args = ["ingest", str(files / "good.png"), "--split", "", "--store", str(tmp_path / "store")]
    result = invoke(args, unchanged=tmp_path)
    assert result.exit_code == 2
    assert result.output == "error: split must be a non-empty name such as 'train', 'val' or 'test'\n"


def test_ingest_into_an_existing_store_leaves_it_unchanged_when_nothing_is_readable(engine, files):
    store_root = engine["root"] / "store"
    result = invoke(["ingest", str(files / "bad"), "--store", engine["store"]], unchanged=store_root)
    assert result.exit_code == 2 and "error: no image registered" in result.output


def test_ingest_registers_what_it_can_counts_what_it_skipped_and_a_rerun_changes_nothing(engine, files):
    store = ["--store", engine["store"]]
    result = runner.invoke(
        app, ["ingest", engine["images"], str(files / "text"), str(files / "empty"), *store]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:2] == [
        f"warning: folder {files / 'text'} holds 2 files, none ending in {EXTENSIONS}",
        f"warning: folder {files / 'empty'} holds no files",
    ]
    assert lines[2].startswith(f"skipped {(engine['root'] / 'images' / 'corrupt.png').as_uri()}: truncated")
    assert lines[3:] == [
        "1 file skipped (1 truncated or damaged image)",
        f"3 images (3 new) in {engine['store']}",
    ]

    result = invoke(["ingest", engine["images"], *store], unchanged=engine["root"] / "store")
    assert result.exit_code == 0 and result.output.endswith(f"3 images (0 new) in {engine['store']}\n")


def test_ingest_mentions_the_files_it_ignored_by_extension(engine, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    Image.new("RGB", (8, 8)).save(folder / "b.gif")  # a picture PIL reads, but not an extension ingest takes
    result = runner.invoke(app, ["ingest", str(folder), "--store", engine["store"]])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"ignored 1 file not ending in {EXTENSIONS}",
        f"1 images (1 new) in {engine['store']}",
    ]


# ---- model add and segment -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["v1", "tiny", "{missing}"], "model 'v1': checkpoint {missing} does not exist"),
        (["v1", "tiny", "{folder}"], "model 'v1': checkpoint {folder} is a folder, not a checkpoint file"),
        (
            ["v1", "vit_x", "{checkpoint}"],
            "unknown SAM config 'vit_x'; choose one of ['tiny', 'tiny_conv', 'tiny_conv_slim', 'vit_b', 'vit_h', 'vit_l']",
        ),
        (
            ["embedded", "tiny", "{checkpoint}"],
            "model_version 'embedded' is reserved (embedded: the shipped model, latest: the newest registered one)",
        ),
        (
            ["my/model", "tiny", "{checkpoint}"],
            "model_version='my/model' is not a valid key: use letters, digits and . _ + - only",
        ),
    ],
)
def test_model_add_refuses_bad_input_before_creating_the_store(tmp_path, args, message):
    paths = {"missing": tmp_path / "nope.pt", "folder": tmp_path, "checkpoint": tmp_path / "weights.pt"}
    (tmp_path / "weights.pt").write_bytes(b"weights")
    args = [a.format(**paths) for a in args]
    result = invoke(["model", "add", *args, "--store", str(tmp_path / "store")], unchanged=tmp_path)
    assert result.exit_code == 2
    assert result.output == f"error: {message.format(**paths)}\n"


def test_demo_from_a_checkpoint_that_is_not_there_says_so_before_it_starts(tmp_path):
    out = tmp_path / "demo"
    result = invoke(
        ["demo", "--quick", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)], tmp_path
    )
    assert result.exit_code == 2
    assert result.output == f"error: model 'pretrained': checkpoint {tmp_path / 'nope.pt'} does not exist\n"
    assert not out.exists()


def test_segment_of_a_file_that_is_not_an_image_says_so(engine, tmp_path):
    letter = tmp_path / "letter.png"
    letter.write_text("not a picture")
    args = ["segment", str(letter), "--out", str(tmp_path / "o.png"), "--store", engine["store"]]
    result = invoke(args, unchanged=tmp_path)
    assert result.exit_code == 2
    assert result.output == f"error: {letter}: not an image PIL can read\n"


def test_segment_to_an_output_name_that_is_no_image_format_says_so_before_any_model_runs(engine, tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    for out in ("out", "masks.txt"):
        args = ["segment", str(image), "--out", str(tmp_path / out), "--store", engine["store"]]
        result = invoke(args, unchanged=tmp_path)
        assert result.exit_code == 2
        assert result.output == (
            f"error: --out {tmp_path / out}: not an image file name PIL can write (end it in .png or .jpg)\n"
        )


# ---- help --------------------------------------------------------------------------------------------------------


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_help_names_each_value_in_words_not_as_a_python_type():
    commands = [[], ["demo"], ["ingest"], ["embed"], ["round"], ["train"], ["eval"], ["calibrate"]]
    commands += [["export", "coco"], ["export", "sa1b"], ["query", "masks"], ["segment"], ["model", "add"]]
    for args in commands:
        text = _help(*args)
        assert not re.search(r"<(str|int|float|bool|path|list)", text), (args, text)
    ingest = _help("ingest")
    assert re.search(r"\* +URI +image files, folders or glob patterns", ingest)
    assert re.search(r"--store +URI +store URL or path", ingest)
    assert re.search(r"--split +SPLIT .*\[default: train\]", ingest)


def test_help_of_round_lists_the_stages_and_shows_defaults():
    text = _help("round")
    assert re.search(r"--stage +STAGE +one of assisted_manual, semi_automatic, fully_automatic", text)
    assert re.search(r"--round +-r +N \[x>=0\]", text)
    assert re.search(r"--retrain-steps +N \[x>=0\] +0: no retrain \[default: 200\]", text)
    assert re.search(r"--train-backend +ray\|local .*\[default: ray\]", text)


def test_a_stage_that_does_not_exist_is_refused_with_the_choices(tmp_path):
    args = ["round", "--stage", "manual", "--round", "0", "--store", str(tmp_path / "store")]
    before = listing(tmp_path)
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2 and listing(tmp_path) == before
    assert "'manual' is not one of 'assisted_manual', 'semi_automatic', 'fully_automatic'" in result.output
