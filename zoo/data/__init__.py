"""Data: tokenizers, transform stacks, on-disk image–text formats, embedded datasets."""

from zoo.data.collate import collate_samples
from zoo.data.embedded import DigitsDataset, build_digits
from zoo.data.formats import HFImageText, ImageTextTable, image_text_webdataset
from zoo.data.samples import BadSample, SampleBuilder, SkipCounter, SkipReplaceDataset
from zoo.data.tokenizers import TextTokenizer, clip_bpe_tokenizer, load_tokenizer
from zoo.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, TRANSFORMS, build_transform

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "TRANSFORMS",
    "BadSample",
    "DigitsDataset",
    "HFImageText",
    "ImageTextTable",
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
