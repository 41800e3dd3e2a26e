"""Backbones and heads."""
from wsss.models.backbones import Backbone, build_backbone
from wsss.models.classifier import CamClassifier

__all__ = ["Backbone", "build_backbone", "CamClassifier"]
