"""Bad input fails clearly or is skipped and counted, never silently: tables that are not
valid UTF-8, abbreviated command-line options, huge images, and exported files with odd
modes."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.cli_helpers import fail as _fail
from zoo.cli import main
from zoo.data.columns import NotUTF8Error, read_table_columns
from zoo.data.formats import ImageTextTable, image_text_webdataset
from zoo.data.indexed_shards import IndexedShards
from zoo.data.samples import DEFAULT_MAX_PIXELS, BadSample, decode_image

ROOT = Path(__file__).resolve().parents[2]


def _size(image: Image.Image) -> torch.Tensor:
    """An image transform that keeps only the decoded (width, height)."""
    return torch.tensor(image.size)


class _Tokens:
    """A stand-in tokenizer (the real one is not under test here)."""

    def __call__(self, text: str) -> torch.Tensor:
        return torch.zeros(4, dtype=torch.long)


def _image_bytes(size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 60, 200)).save(buf, format=fmt)
    return buf.getvalue()


# --------------------------------------------------------------------------- UTF-8 tables


def _write_csv(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(4):
        (folder / f"{k}.png").write_bytes(_image_bytes((8, 6), "PNG"))
    lines = [
        b"image,caption,label,note\n",
        b"0.png,a red square,0,ok\n",
        b"1.png,caf\xe9 au lait,1,ok\n",  # latin-1, line 3 = data row 2
        b"2.png,a blue square,2,ok\n",
        b"3.png,a green square,3,na\xefve\n",  # invalid bytes in an unused column only
    ]
    path = folder / "pairs.csv"
    path.write_bytes(b"".join(lines))
    return path


def test_non_utf8_caption_names_file_line_row_and_column(tmp_path) -> None:
    path = _write_csv(tmp_path)
    with pytest.raises(ValueError) as info:
        ImageTextTable(path, tokenizer=_Tokens())
    message = str(info.value)
    assert isinstance(info.value, NotUTF8Error)
    assert f"{path}:3:" in message and "row 2" in message and "'caption'" in message
    assert r"caf\xe9 au lait" in message  # the offending bytes, shown
    assert "bad_rows='skip'" in message and "UTF-8" in message  # how to proceed
    assert (info.value.line, info.value.row, info.value.column) == (3, 2, "caption")


def test_bad_rows_skip_leaves_the_row_out_logs_and_counts_it(tmp_path, caplog) -> None:
    path = _write_csv(tmp_path)
    with caplog.at_level(logging.WARNING, logger="zoo.data"):
        ds = ImageTextTable(path, tokenizer=_Tokens(), image_transform=_size, bad_rows="skip")
    assert len(ds) == 3 and ds.skipped_rows == 1
    # the kept rows stay aligned: image, caption and label of the same row
    assert [ds[i]["caption"] for i in range(3)] == ["a red square", "a blue square", "a green square"]  # fmt: skip
    assert [ds[i]["label"] for i in range(3)] == [0, 2, 3]
    assert list(ds.images) == ["0.png", "2.png", "3.png"]
    logged = caplog.text
    assert f"{path}:3" in logged and "not valid UTF-8" in logged
    assert re.search(r"skipped 1 of 4 rows", logged)


def test_jsonl_with_image_key_and_bad_utf8(tmp_path) -> None:
    for k in range(3):
        (tmp_path / f"{k}.jpg").write_bytes(_image_bytes((8, 6), "JPEG"))
    good = [json.dumps({"filepath": f"{k}.jpg", "title": f"title {k}", "label": k}) for k in range(3)]  # fmt: skip
    raw = [line.encode() for line in good]
    raw.insert(1, b"")  # a blank line still counts as a line
    raw[2] = raw[2].replace(b"title 1", b"t\xffitle 1")  # line 3, data row 2
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(raw) + b"\n")
    kwargs = dict(image_key="filepath", caption_keys="title", tokenizer=_Tokens())
    with pytest.raises(NotUTF8Error, match=re.escape(f"{path}:3: row 2 (1-based), column 'title'")):
        ImageTextTable(path, **kwargs)
    ds = ImageTextTable(path, bad_rows="skip", image_transform=_size, **kwargs)
    assert list(ds.images) == ["0.jpg", "2.jpg"] and ds.skipped_rows == 1
    assert [ds[i]["caption"] for i in range(2)] == ["title 0", "title 2"]
    assert ds[1]["image"].tolist() == [8, 6]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_hf_imagefolder_with_non_utf8_metadata_names_the_file_and_line(tmp_path, kind) -> None:
    from zoo.data.formats import HFImageText

    folder = tmp_path / "data" / "train"
    folder.mkdir(parents=True)
    for k in range(2):
        (folder / f"{k}.png").write_bytes(_image_bytes((8, 6), "PNG"))
    if kind == "csv":
        text = b"file_name,caption,label\n0.png,ok,0\n1.png,caf\xe9,1\n"
    else:
        text = b'{"file_name": "0.png", "caption": "ok", "label": 0}\n'
        text += b'{"file_name": "1.png", "caption": "caf\xe9", "label": 1}\n'
    metadata = folder / f"metadata.{kind}"
    metadata.write_bytes(text)
    line = 3 if kind == "csv" else 2
    with pytest.raises(ValueError, match=re.escape(f"{metadata}:{line}:")) as info:
        HFImageText(tmp_path / "data", cache_dir=tmp_path / "cache", tokenizer=_Tokens())
    assert "not valid UTF-8" in str(info.value) and "bad_rows" in str(info.value)


def test_read_table_columns_rejects_unknown_bad_rows_policy(tmp_path) -> None:
    path = _write_csv(tmp_path)
    with pytest.raises(ValueError, match="bad_rows must be"):
        read_table_columns(path, ["image"], None, lambda columns: None, bad_rows="ignore")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- CLI options


def test_abbreviated_option_is_refused_before_training(tmp_path, capsys) -> None:
    tiny = str(ROOT / "recipes/clip/tiny.yaml")
    root = ["--trainer.default_root_dir", str(tmp_path)]
    err = _fail(["fit", "--config", tiny, "--trainer.max_epoch", "1", *root], capsys)
    assert re.search(r"--trainer\.max_epoch(?!s)", err), err[-2000:]
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("events.*"))
    # full names and list appends still parse
    extra = ["--trainer.callbacks+=lightning.pytorch.callbacks.RichModelSummary"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", tiny, "--trainer.max_epochs", "3", *extra, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert re.search(r"(?m)^  max_epochs: 3$", printed)
    assert "lightning.pytorch.callbacks.RichModelSummary" in printed
    assert "zoo.eval.ZeroShotEval" in printed  # appended to the recipe's, not replacing them


# --------------------------------------------------------------------------- huge images


def test_large_jpeg_is_decoded_at_reduced_size_within_the_budget() -> None:
    data = _image_bytes((4000, 3000), "JPEG")
    assert decode_image(data).size == (4000, 3000)  # 12 MP: within the default budget
    budget = 1_000_000
    image = decode_image(data, "big.jpg", max_pixels=budget)
    width, height = image.size
    assert width * height <= budget
    assert abs(width / height - 4 / 3) < 0.01
    assert (width, height) == (1000, 750)  # 1/4: the largest DCT scale that fits (1/2 does not)
    assert image.getpixel((width // 2, height // 2)) == pytest.approx((120, 60, 200), abs=4)
    with pytest.raises(BadSample, match="exceed the budget"):
        decode_image(data, "big.jpg", max_pixels=10_000)  # over budget even at 1/8


def test_large_png_over_budget_is_a_bad_sample() -> None:
    data = _image_bytes((2000, 1500), "PNG")
    with pytest.raises(BadSample) as info:
        decode_image(data, "big.png", max_pixels=1_000_000)
    assert info.value.source == "big.png"
    assert "3000000 pixels exceed the budget of 1000000" in info.value.reason
    assert decode_image(data, "big.png", max_pixels=None).size == (2000, 1500)


def test_pillow_bomb_limit_is_deterministic(monkeypatch) -> None:
    data = _image_bytes((4000, 3000), "JPEG")  # 12 MP
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8_000_000)  # Pillow warns above 8 MP
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the budget is the check: no DecompressionBombWarning
        assert decode_image(data, max_pixels=4_000_000).size == (2000, 1500)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000_000)  # Pillow refuses above 10 MP
    for budget in (4_000_000, None):
        with pytest.raises(BadSample, match="MAX_IMAGE_PIXELS"):
            decode_image(data, max_pixels=budget)
    assert DEFAULT_MAX_PIXELS < 89_478_485  # below Pillow's default warning threshold


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_readers_pass_max_pixels_to_the_decoder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VL_ZOO_CACHE", str(tmp_path / "cache"))
    big_jpeg = _image_bytes((1600, 1200), "JPEG")
    big_png = _image_bytes((1600, 1200), "PNG")
    (tmp_path / "a.jpg").write_bytes(big_jpeg)
    (tmp_path / "b.png").write_bytes(big_png)
    table = tmp_path / "t.csv"
    table.write_text("image,caption\na.jpg,jpeg\nb.png,png\n")
    common = dict(tokenizer=_Tokens(), image_transform=_size, max_pixels=200_000)
    ds = ImageTextTable(table, label_key=None, **common)
    assert ds[0]["image"].tolist() == [400, 300]  # 1/4
    assert ds[1]["caption"] == "jpeg" and ds.skipped == 1  # the PNG: skipped, replaced
    shard = _tar(
        tmp_path / "s.tar",
        {"a.jpg": big_jpeg, "a.txt": b"jpeg", "b.png": big_png, "b.txt": b"png"},
    )
    indexed = IndexedShards(str(shard), label_key=None, **common)
    assert indexed[0]["image"].tolist() == [400, 300]
    assert indexed[1]["caption"] == "jpeg" and indexed.skipped == 1
    streamed = list(image_text_webdataset(str(shard), label_key=None, **common))
    assert [s["image"].tolist() for s in streamed] == [[400, 300]]
    assert streamed[0]["caption"] == "jpeg" and streamed[0].get("skipped", 0) == 0
    with pytest.raises(ValueError, match="max_pixels"):
        ImageTextTable(table, label_key=None, tokenizer=_Tokens(), max_pixels=0)


# --------------------------------------------------------------------------- export modes


@torch.no_grad()
def test_exported_files_share_the_umask_mode(tmp_path) -> None:
    from transformers import CLIPConfig, CLIPModel

    from zoo.data.tokenizers import clip_bpe_tokenizer
    from zoo.hub import export_model

    vocab = 100
    common = dict(hidden_act="quick_gelu", num_hidden_layers=1, num_attention_heads=2)
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, eos_token_id=vocab - 1)
    text |= dict(bos_token_id=vocab - 2, pad_token_id=0, max_position_embeddings=16)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64)
    config = CLIPConfig(text_config=text | common, vision_config=vision | common, projection_dim=8)
    src = tmp_path / "hf"
    CLIPModel(config).save_pretrained(src)
    clip_bpe_tokenizer(tmp_path / "bpe").save_pretrained(src)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed_everything: 0\n")
    for private in [recipe, *src.glob("*.json"), *src.glob("*.txt")]:
        private.chmod(0o600)  # copies must not inherit their source's mode

    umask = 0o027
    old = os.umask(umask)
    try:
        result = export_model(src, "mode-test", tmp_path / "out", recipe=recipe)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert (result.model_dir / "model.safetensors") in files
    assert (result.model_dir / "tokenizer" / "tokenizer.json") in files
    assert (result.model_dir / "recipe.yaml") in files
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
