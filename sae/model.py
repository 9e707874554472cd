"""The TopK sparse autoencoder, its config, and its files.

z = TopK_k(ReLU(W_enc (x - b_pre) + b_enc));  x_hat = W_dec^T z + b_pre

Layout (ours, in ``sae.safetensors``): ``W_enc`` [n_features, d_in], ``b_enc`` [n_features],
``W_dec`` [n_features, d_in] (row f is the unit-norm decoder direction d_f), ``b_pre`` [d_in],
``feature_mean`` [n_features] (sigma_f: mean of the non-zero activations) and
``feature_frequency`` [n_features] (fraction of training vectors where the feature fired).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import SAEError

SITES = ("delta", "output")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "sae.safetensors"
SAEPAINT_WEIGHTS_NAME = "state_dict.pth"


@dataclass
class SAEConfig:
    """Plain-data description of an SAE: sizes, where it reads, and how it was trained."""

    d_in: int
    n_features: int
    k: int
    site: str = "delta"
    block: str | None = None
    model: str | None = None
    dtype: str = "float32"
    auxk: int | None = None
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("d_in", "n_features", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SAEError(f"SAE config field '{name}' is {value!r}; it must be an integer >= 1")
        if self.k >= self.n_features:
            raise SAEError(f"SAE config field 'k' is {self.k}; it must be smaller than n_features ({self.n_features})")
        if self.site not in SITES:
            raise SAEError(f"SAE config field 'site' is {self.site!r}; allowed: {', '.join(SITES)}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise SAEError(f"SAE config field 'dtype' is {self.dtype!r}; allowed: float32, float16, bfloat16")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        if not isinstance(data, dict):
            raise SAEError(f"SAE config must be a JSON object, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        missing = [f for f in ("d_in", "n_features", "k") if f not in data]
        if missing:
            raise SAEError(f"SAE config is missing field(s) {', '.join(missing)}")
        return cls(**{key: value for key, value in data.items() if key in known})


class SAE(nn.Module):
    """A TopK SAE over vectors of size ``d_in`` with ``n_features`` features."""

    def __init__(self, config: SAEConfig) -> None:
        super().__init__()
        self.config = config
        n, d = config.n_features, config.d_in
        self.W_enc = nn.Parameter(torch.empty(n, d))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.empty(n, d))
        self.b_pre = nn.Parameter(torch.zeros(d))
        self.register_buffer("feature_mean", torch.ones(n))
        self.register_buffer("feature_frequency", torch.zeros(n))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit-norm decoder rows; the encoder starts as the decoder's transpose."""
        self.W_dec.copy_(torch.randn(self.W_dec.shape, generator=generator))
        self.normalize_decoder()
        self.W_enc.copy_(self.W_dec)
        self.b_enc.zero_()
        self.b_pre.zero_()

    @property
    def n_features(self) -> int:
        return self.config.n_features

    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def k(self) -> int:
        return self.config.k

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(W_enc (x - b_pre) + b_enc) for x of shape [..., d_in]."""
        return torch.relu((x - self.b_pre) @ self.W_enc.T + self.b_enc)

    def encode_topk(self, x: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The k largest activations and their feature indices, each [..., k]."""
        top = torch.topk(self.pre_activations(x), k or self.k, dim=-1)
        return top.values, top.indices

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes z [..., n_features] with at most k non-zeros per vector."""
        values, indices = self.encode_topk(x)
        z = torch.zeros(*x.shape[:-1], self.n_features, dtype=values.dtype, device=values.device)
        return z.scatter_(-1, indices, values)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x_hat from dense codes z [..., n_features]."""
        return z @ self.W_dec + self.b_pre

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x_hat from the k non-zeros only: gathers k decoder rows instead of a dense product."""
        flat_values = values.reshape(-1, values.shape[-1])
        flat_indices = indices.reshape(-1, indices.shape[-1])
        out = nn.functional.embedding_bag(flat_indices, self.W_dec, per_sample_weights=flat_values, mode="sum")
        return out.reshape(*values.shape[:-1], self.d_in) + self.b_pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = self.encode_topk(x)
        return self.decode_sparse(values, indices)

    def direction(self, feature: int) -> torch.Tensor:
        """The decoder direction d_f of one feature, shape [d_in]."""
        self.check_feature(feature)
        return self.W_dec[feature]

    def check_feature(self, feature: int, field_name: str = "feature") -> None:
        if not isinstance(feature, int) or isinstance(feature, bool) or not 0 <= feature < self.n_features:
            raise SAEError(
                f"{field_name} is {feature!r}; this SAE has features 0..{self.n_features - 1}"
                + (f" (block {self.config.block})" if self.config.block else "")
            )

    @torch.no_grad()
    def set_feature_statistics(self, mean: torch.Tensor, frequency: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_frequency.copy_(frequency)

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` and ``sae.safetensors`` into the folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in self.state_dict().items()}
        tmp = folder / (WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / WEIGHTS_NAME)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> SAE:
        """Load an SAE folder: ours, or a SAEPaint checkpoint (converted on load). Accepts ``hf://`` paths."""
        folder = resolve_path(path)
        if (folder / WEIGHTS_NAME).exists():
            sae = _load_ours(folder)
        elif (folder / SAEPAINT_WEIGHTS_NAME).exists():
            sae = load_saepaint(folder)
        else:
            raise SAEError(
                f"SAE path '{path}' holds neither {WEIGHTS_NAME} (ours) nor {SAEPAINT_WEIGHTS_NAME} (SAEPaint format)"
            )
        return sae.to(device).eval()


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise SAEError(f"SAE folder '{file.parent}' has no {file.name}") from None
    except json.JSONDecodeError as exc:
        raise SAEError(f"'{file}' is not valid JSON: {exc}") from None


def _load_ours(folder: Path) -> SAE:
    config = SAEConfig.from_dict(_read_json(folder / CONFIG_NAME))
    try:
        tensors = load_file(str(folder / WEIGHTS_NAME))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SAEError(f"'{folder / WEIGHTS_NAME}' is truncated or corrupted: {exc}") from None
    sae = SAE(config)
    expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
    for name, shape in expected.items():
        if name not in tensors:
            raise SAEError(f"'{folder / WEIGHTS_NAME}' lacks tensor '{name}' (expected shape {list(shape)})")
        if tuple(tensors[name].shape) != shape:
            raise SAEError(
                f"'{folder / WEIGHTS_NAME}' tensor '{name}' has shape {list(tensors[name].shape)}; "
                f"config.json says {list(shape)}"
            )
    sae.load_state_dict({name: tensors[name].float() for name in expected})
    return sae


def load_saepaint(folder: str | Path) -> SAE:
    """Convert a SAEPaint checkpoint folder (config.json, state_dict.pth, mean.pt, std.pt) to our SAE.

    The .pth files are read with ``weights_only=True``: no pickled code runs.
    """
    folder = Path(folder)
    cfg = _read_json(folder / CONFIG_NAME)
    for key in ("n_dirs_local", "d_model", "k"):
        if key not in cfg:
            raise SAEError(f"SAEPaint config '{folder / CONFIG_NAME}' lacks field '{key}'")
    n, d = int(cfg["n_dirs_local"]), int(cfg["d_model"])
    config = SAEConfig(d_in=d, n_features=n, k=int(cfg["k"]), auxk=cfg.get("auxk"), site="delta",
                       training={"source": "saepaint", "dead_steps_threshold": cfg.get("dead_steps_threshold")})
    raw = _torch_load(folder / SAEPAINT_WEIGHTS_NAME)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise SAEError(f"'{folder / SAEPAINT_WEIGHTS_NAME}' must hold a dict with key 'state_dict'")
    expected = {"encoder.weight": (n, d), "decoder.weight": (d, n), "pre_bias": (d,), "latent_bias": (n,)}
    for key, shape in expected.items():
        tensor = state.get(key)
        if not isinstance(tensor, torch.Tensor):
            raise SAEError(f"'{folder / SAEPAINT_WEIGHTS_NAME}' lacks tensor 'state_dict.{key}'")
        if tuple(tensor.shape) != shape:
            raise SAEError(
                f"'{folder / SAEPAINT_WEIGHTS_NAME}' tensor 'state_dict.{key}' has shape {list(tensor.shape)}; "
                f"config (n_dirs_local={n}, d_model={d}) requires {list(shape)}"
            )
    sae = SAE(config)
    with torch.no_grad():
        sae.W_enc.copy_(state["encoder.weight"].float())
        sae.W_dec.copy_(state["decoder.weight"].float().T)
        sae.b_pre.copy_(state["pre_bias"].float())
        sae.b_enc.copy_(state["latent_bias"].float())
        mean_file = folder / "mean.pt"
        if mean_file.exists():
            mean = _torch_load(mean_file)
            if not isinstance(mean, torch.Tensor) or tuple(mean.shape) != (n,):
                raise SAEError(f"'{mean_file}' must hold a tensor of shape [{n}]")
            sae.feature_mean.copy_(mean.float().abs().clamp_min(1e-6))
        if "stats_last_nonzero" in state:
            fired = state["stats_last_nonzero"].float() < float(cfg.get("dead_steps_threshold") or math.inf)
            sae.feature_frequency.copy_(fired.float())
    return sae


def _torch_load(file: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SAEError(f"'{file}' does not exist") from None
    except Exception as exc:  # torch raises several types for bad or unsafe pickles
        raise SAEError(f"'{file}' cannot be read as a weights-only PyTorch file: {exc}") from None


def resolve_path(path: str | Path) -> Path:
    """A local folder, or an ``hf://`` URI fetched (or found in the cache) by huggingface_hub (``sae.hub``)."""
    text = str(path)
    if text.startswith("hf://"):
        from .hub import resolve_uri

        return resolve_uri(text, what="SAE path")
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise SAEError(f"SAE path '{text}' is not a folder")
    return folder
