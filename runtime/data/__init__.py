"""Data: where inputs come from (folders, CSV and JSONL files, built-in sets) and how they become tensors."""

from ..exports import lazy_names

_NAMES = {
    **dict.fromkeys(("ImageRecord", "LabeledData", "open_data", "input_records", "stratified_split",
                     "check_trainable", "SPLITS", "SPLIT_NAMES", "IMAGE_EXTENSIONS"), ".sources"),
    **dict.fromkeys(("PreprocessConfig", "load_image", "DEFAULT_MAX_PIXELS"), ".preprocess"),
    **dict.fromkeys(("TextPreprocess", "TextRecord"), ".text"),
    **dict.fromkeys(("read_batches", "Batch"), ".reader"),
}
__all__ = list(_NAMES)
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
