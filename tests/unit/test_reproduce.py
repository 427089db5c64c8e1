"""``zoo reproduce``: runs fit per seed through the CLI, summarises mean ± std from the
runs' own metrics, records provenance and appends to the metafile."""

import hashlib
import json
import shutil
import statistics
from pathlib import Path

import yaml

from zoo.reproduce import reproduce_command

ROOT = Path(__file__).resolve().parents[2]


def test_reproduce_records_and_appends(tmp_path, monkeypatch):
    paper = tmp_path / "recipes" / "clip"
    paper.mkdir(parents=True)
    shutil.copy(ROOT / "recipes/clip/tiny.yaml", paper / "tiny.yaml")
    meta = yaml.safe_load((ROOT / "recipes/clip/metafile.yaml").read_text())
    meta["reproduced"] = []
    (paper / "metafile.yaml").write_text("# header kept\n" + yaml.safe_dump(meta))
    out = tmp_path / "record.json"
    monkeypatch.chdir(tmp_path)
    code = reproduce_command(
        [
            str(paper / "tiny.yaml"),
            "--seeds",
            "2",
            "--scale",
            "test scale",
            "--out",
            str(out),
            "--append",
            "--",
            "--trainer.fast_dev_run",
            "2",
        ]
    )
    assert code == 0
    record = json.loads(out.read_text())
    assert record["seeds"] == [0, 1]
    assert record["config_sha256"] == hashlib.sha256(record["config"].encode()).hexdigest()
    assert "lightning_modules.clip.CLIP" in record["config"]
    assert record["versions"]["torch"] and record["date"] and "CPU" in record["hardware"]
    zs = record["metrics"]["eval/zeroshot_top1"]
    per_seed = [m["eval/zeroshot_top1"] for m in record["per_seed"]]
    assert zs["values"] == [round(v, 4) for v in per_seed]
    assert abs(zs["mean"] - statistics.fmean(per_seed)) < 1e-3
    assert abs(zs["std"] - statistics.stdev(per_seed)) < 1e-3
    text = (paper / "metafile.yaml").read_text()
    assert text.startswith("# header kept\n")
    entries = yaml.safe_load(text)["reproduced"]
    assert {e["metric"] for e in entries} >= {"eval/zeroshot_top1", "eval/linear_probe_top1"}
    entry = next(e for e in entries if e["metric"] == "eval/zeroshot_top1")
    assert (
        entry["mean"] == zs["mean"] and entry["seeds"] == [0, 1] and entry["scale"] == "test scale"
    )
    assert (
        entry["command"].startswith("python -m zoo reproduce")
        and "fast_dev_run" in entry["command"]
    )
    # the settings changed after `--` are part of the entry and of its README row
    assert record["overrides"] == entry["overrides"] == ["--trainer.fast_dev_run", "2"]
    from zoo.docs import recipe_setting

    assert recipe_setting(entry) == "`tiny.yaml` `--trainer.fast_dev_run 2`"
