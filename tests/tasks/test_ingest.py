"""Ingest registers images by content hash, expands folders and globs, and skips unreadable files with a reason."""

import numpy as np
from PIL import Image

from stores import Store
from tasks.ingest import expand_uris, ingest, load_image


def _png(path, seed, size=(24, 16)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_ingest_registers_by_content_hash_and_skips_corrupt(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _png(images / "a.png", 0)
    _png(images / "b.png", 1)
    (images / "copy_of_a.png").write_bytes((images / "a.png").read_bytes())
    (images / "broken.png").write_bytes((images / "a.png").read_bytes()[:60])  # truncated
    (images / "notes.txt").write_text("not an image")
    store_url = (tmp_path / "store").as_uri()

    result = ingest.fn(store_url, [str(images)], split="train")
    assert len(result.image_ids) == 2 and result.new == 2
    assert [s["uri"].rsplit("/", 1)[-1] for s in result.skipped] == ["broken.png"]
    assert result.skipped[0]["reason"] == "truncated or damaged image"
    table = Store(store_url).images()
    assert sorted(table.image_id) == sorted(result.image_ids)
    assert set(table.width) == {24} and set(table.height) == {16} and set(table.split) == {"train"}
    assert (table.image_id == table.sha256).all()

    again = ingest.fn(store_url, [str(images / "*.png")], split="val")
    assert again.new == 0 and len(Store(store_url).images()) == 2
    assert set(Store(store_url).images().split) == {"train"}  # an image keeps its first split


def test_missing_uri_is_skipped_not_fatal(tmp_path):
    store_url = (tmp_path / "store").as_uri()
    result = ingest.fn(store_url, [str(tmp_path / "nope.png")])
    assert result.image_ids == [] and "nope.png" in result.skipped[0]["uri"]


def test_expand_uris_on_memory_filesystem_and_load(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    _png(tmp_path / "x.png", 3)
    fs.pipe("/ingest-test/imgs/x.png", (tmp_path / "x.png").read_bytes())
    uris = expand_uris(["memory://ingest-test/imgs"])
    assert uris == ["memory:///ingest-test/imgs/x.png"]
    assert load_image(uris[0]).shape == (16, 24, 3)
