"""Backbones: timm vision towers, the CLIP text transformer and the dual-encoder interface."""

from zoo.backbones.dual_encoder import DualEncoder, DualEncoderSpec, build_dual_encoder
from zoo.backbones.text import CLIPTextTower, TextSpec
from zoo.backbones.vision import VisionSpec, build_vision_tower

__all__ = [
    "CLIPTextTower",
    "DualEncoder",
    "DualEncoderSpec",
    "TextSpec",
    "VisionSpec",
    "build_dual_encoder",
    "build_vision_tower",
]
