"""The model card (``README.md``) of a model folder, rendered from its ``config.json``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _vision_summary(vision: Mapping[str, Any]) -> str:
    parts = [f"`{vision.get('model_name')}`", f"image {vision.get('img_size')}"]
    for key in ("patch_size", "embed_dim", "depth", "num_heads"):
        if vision.get(key) is not None:
            parts.append(f"{key} {vision[key]}")
    return ", ".join(parts)


def _text_summary(text: Mapping[str, Any]) -> str:
    keys = ("width", "layers", "heads", "context_length", "vocab_size", "act", "pooling")
    return ", ".join(f"{k} {text.get(k)}" for k in keys)


def _architecture_rows(arch: Mapping[str, Any]) -> list[str]:
    """Table rows describing the architecture entry (by its ``type``)."""
    kind = arch["type"]
    if kind in ("dual_encoder", "clip_head"):
        spec = arch["spec"]
        rows = [
            f"| Vision tower | {_vision_summary(spec['vision'])} |",
            f"| Text tower | {_text_summary(spec['text'])} |",
            f"| Embedding dim | {spec['embed_dim']} |",
        ]
        if kind == "clip_head":
            head = arch["head"]
            classes = len(head["config"].get("classnames", []))
            rows.append(f"| Head | `{head['type']}` ({classes} classes), encoder frozen |")
        return rows
    if kind == "vision_encoder":
        return [f"| Vision tower | {_vision_summary(arch['spec'])} |"]
    if kind == "vlm":
        lm = arch["language_model"]
        return [
            f"| Vision tower | {_vision_summary(arch['vision'])} |",
            f"| Projector | `{arch['projector']}` |",
            f"| Language model | `{lm.get('model_type')}`, hidden {lm.get('hidden_size')} |",
        ]
    if kind == "lora_adapter":
        lora, base = arch["lora"], arch["base"]
        part = "q and v of each fused qkv" if lora["qv_only"] else "whole modules"
        return [
            f"| Base | `{base['type']}`: {_vision_summary(base['spec'])}, weights sha256 "
            f"`{arch['base_sha256']}` |",
            f"| LoRA | r {lora['r']}, alpha {lora['alpha']} on `{', '.join(lora['target_modules'])}`"
            f" ({part}), at `{arch['base_module'] or '(the base)'}` |",
        ]
    return [f"| Architecture | `{kind}` |"]


_KIND_TEXT = {
    "dual_encoder": "image–text dual encoder",
    "vision_encoder": "image encoder",
    "clip_head": "frozen image–text encoder with a classifier head",
    "vlm": "vision–language model",
    "lora_adapter": "LoRA adapter (the LoRA matrices alone, merged into their base at load)",
}


def _tokenizer_text(tok: Mapping[str, Any] | None) -> str:
    if tok is None:
        return "None: an image-only model."
    return (
        f"`{tok['name_or_path']}`, context length {tok['context_length']} "
        "(`model.tokenizer`; `model.encode_text` accepts strings)."
    )


def _usage(arch: Mapping[str, Any]) -> list[str]:
    kind = arch["type"]
    if kind in ("dual_encoder", "clip_head"):
        lines = [
            "image_features = model.encode_image([pil_image])  # model.transform applied",
            'text_features = model.encode_text(["a photo of a dog"])  # model.tokenizer applied',
        ]
        if kind == "clip_head":
            lines.append("logits = model.logits([pil_image])  # one column per class")
        return lines
    if kind == "vlm":
        return ["logits = model.logits([pil_image], token_ids)  # next-token logits"]
    if kind == "lora_adapter":
        return [
            "# an adapter loads only with the base it was trained on (sha256 checked):",
            '# model = zoo.load("local-dir:path/to/adapter", base="local-dir:path/to/base")',
            "features = model.features([pil_image])  # the base with the adapter merged",
        ]
    return ["features = model.features([pil_image])  # model.transform applied"]


def _metric_rows(metrics: Mapping[str, Any]) -> list[str]:
    if not metrics:
        return ["No metrics were recorded at export (`zoo export --metrics`)."]
    rows = ["| metric | value | measured on |", "|---|---|---|"]
    for name, entry in metrics.items():
        extra = {k: v for k, v in entry.items() if k not in ("value", "dataset")}
        where = entry.get("dataset") or "not stated"
        if extra:
            where += " (" + ", ".join(f"{k}: {v}" for k, v in extra.items()) + ")"
        rows.append(f"| {name} | {entry['value']} | {where} |")
    return rows


def render_card(config: Mapping[str, Any]) -> str:
    """Markdown model card: summary, preprocessing, tokenizer, metrics, provenance, usage."""
    name, arch = config["name"], config["architecture"]
    counts = arch.get("num_parameters") or {}
    pre, tok, weights = config["preprocess"], config["tokenizer"], config["weights"]
    prov, recipe = config["provenance"], config.get("recipe") or {}
    heads = config["heads"]
    head_text = (
        ", ".join(
            f"`{n}` ({h['type']}, {h['in_dim']} → {h['spec'].get('out_dim')})"
            for n, h in heads.items()
        )
        or "none"
    )
    lines = [
        f"# {name}",
        "",
        f"A vl-zoo model: a **{config['paper']}** {_KIND_TEXT.get(arch['type'], arch['type'])}"
        ", exported with its preprocessing, tokenizer and provenance.",
        "",
        "| | |",
        "|---|---|",
        f"| Paper | `{config['paper']}` |",
        *_architecture_rows(arch),
        f"| Extra heads | {head_text} |",
        f"| Parameters | {counts.get('total', '?'):,} (backbone {counts.get('backbone', '?'):,}) |"
        if counts
        else "| Parameters | ? |",
        f"| Weights | `{weights['file']}` ({weights['dtype']}), sha256 `{weights['sha256']}` |",
        f"| zoo version | {config['zoo_version']} |",
        "",
        "## Preprocessing",
        "",
        f"Resize the shortest edge to {pre['resize']} ({pre['interpolation']}), centre-crop "
        f"{pre['crop']}, normalise with mean {list(pre['mean'])} and std {list(pre['std'])} "
        f"(model input {pre['image_size']}×{pre['image_size']}). `model.transform` does this.",
        "",
        "## Tokenizer",
        "",
        _tokenizer_text(tok),
        "",
        "## Metrics",
        "",
        *_metric_rows(config.get("metrics") or {}),
        "",
        "## Provenance",
        "",
        *[f"- {k}: `{v}`" for k, v in prov.items() if v is not None],
        *(
            [f"- recipe: `{recipe.get('path')}` (sha256 `{recipe.get('sha256')}`)"]
            if recipe
            else []
        ),
        "",
        "## How to load",
        "",
        "```python",
        "import zoo",
        "",
        f'model = zoo.load("{name}")  # after installing this package',
        f'# or: zoo.load("local-dir:path/to/{name}")',
        *_usage(arch),
        "```",
        "",
        "Install the package from its folder (`--no-build-isolation` uses the installed "
        "setuptools, so no network is needed):",
        "",
        "```bash",
        f"pip install --no-build-isolation ./{name}",
        "```",
        "",
        "Weights load only after their sha256 matches `config.json` and the `.sha256` file.",
        "",
    ]
    return "\n".join(lines)
