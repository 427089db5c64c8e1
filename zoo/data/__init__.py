"""Data: the sample contract (readers → records → builders → collation), tokenizers,
transform stacks, on-disk formats, embedded datasets."""

from zoo.data.builders import (
    Builder,
    ConversationBuilder,
    DocumentBuilder,
    ImageMaskBuilder,
    ImageTextBuilder,
    LabelledImageBuilder,
    SampleBuilder,
)
from zoo.data.collate import DEFAULT_FIELDS, Collator, FieldSpec, collate_samples
from zoo.data.embedded import DigitsDataset, build_digits
from zoo.data.formats import HFImageText, ImageTextTable, image_text_webdataset
from zoo.data.labelled import HFImageFolder, ImageFolderDataset, ImageLabelTable
from zoo.data.samples import BadSample, SkipCounter, SkipReplaceDataset
from zoo.data.tokenizers import TextTokenizer, clip_bpe_tokenizer, load_tokenizer
from zoo.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, TRANSFORMS, build_transform

__all__ = [
    "DEFAULT_FIELDS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "TRANSFORMS",
    "BadSample",
    "Builder",
    "Collator",
    "ConversationBuilder",
    "DigitsDataset",
    "DocumentBuilder",
    "FieldSpec",
    "HFImageFolder",
    "HFImageText",
    "ImageFolderDataset",
    "ImageLabelTable",
    "ImageMaskBuilder",
    "ImageTextBuilder",
    "ImageTextTable",
    "LabelledImageBuilder",
    "SampleBuilder",
    "SkipCounter",
    "SkipReplaceDataset",
    "TextTokenizer",
    "build_digits",
    "build_transform",
    "clip_bpe_tokenizer",
    "collate_samples",
    "image_text_webdataset",
    "load_tokenizer",
]
