"""Choosing the pretrained model and its freeze point: ``edgetl select`` and ``finetune --backbone auto``."""

from .select import SELECTION_SCHEMA, SelectConfig, parse_backbones, parse_depths, select_backbones, selection_summary

__all__ = ["SELECTION_SCHEMA", "SelectConfig", "parse_backbones", "parse_depths", "select_backbones",
           "selection_summary"]
