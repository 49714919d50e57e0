"""edgetl: transfer learning for edge devices, from fine-tuning to on-device updates.

Importing ``edgetl`` is cheap and torch-free so that ``edgetl.runtime`` can
ship alone to a device; host features are imported from their modules
(``edgetl.finetune``, ``edgetl.exporters``).
"""

__version__ = "0.7.0"
