"""Activation shards on disk: write them atomically, check them, and stream them (in order or shuffled).

A shard folder holds one block's activations::

    manifest.json               model, block, site, d_in, grid, size, steps, dtype, counts (see ``Manifest``)
    prompts.json                the prompts, by prompt id
    shard_00000.safetensors     "acts" [N, d_in] float16, "index" [N, 4] int32 = (prompt id, step, row, col)

Shard i holds prompt batch i, so a re-run knows which shards are finished. A shard is written to a temporary
file and renamed, so a crash never leaves half a shard; a shard cut or corrupted later is detected on reading
(``SAEError`` naming the file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import SAEError

MANIFEST_NAME = "manifest.json"
PROMPTS_NAME = "prompts.json"
SHARD_PATTERN = re.compile(r"shard_(\d{5,})\.safetensors")
INDEX_FIELDS = ("prompt_id", "step", "row", "col")


@dataclass
class Manifest:
    """What a shard folder holds. ``counts`` is filled in when collection finishes."""

    model: str
    block: str
    site: str
    d_in: int
    grid: list[int]
    height: int
    width: int
    num_inference_steps: int
    step_indices: list[int] | None
    guidance_scale: float | None
    seed: int
    batch_size: int
    n_prompts: int
    dtype: str = "float16"
    version: int = 1
    counts: dict[str, int] = field(default_factory=dict)

    def run_key(self) -> dict[str, Any]:
        """The fields that make two collections the same run (counts excluded)."""
        data = asdict(self)
        data.pop("counts")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> Manifest:
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise SAEError(f"'{source}' is not a valid shard manifest: {exc}") from None


def shard_name(number: int) -> str:
    return f"shard_{number:05d}.safetensors"


def read_manifest(folder: str | Path) -> Manifest:
    file = Path(folder) / MANIFEST_NAME
    try:
        return Manifest.from_dict(json.loads(file.read_text()), str(file))
    except FileNotFoundError:
        raise SAEError(f"acts folder '{folder}' has no {MANIFEST_NAME}; create it with `sae collect`") from None
    except json.JSONDecodeError as exc:
        raise SAEError(f"'{file}' is not valid JSON: {exc}") from None


def write_json(file: Path, data: Any) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(file)


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    write_json(Path(folder) / MANIFEST_NAME, asdict(manifest))


def write_shard(file: Path, acts: torch.Tensor, index: torch.Tensor) -> None:
    """Write one shard atomically (temporary file, then rename)."""
    if acts.ndim != 2 or index.shape != (acts.shape[0], len(INDEX_FIELDS)):
        raise SAEError(f"shard {file.name}: acts {list(acts.shape)} and index {list(index.shape)} do not match")
    tmp = file.with_name(file.name + ".tmp")
    save_file({"acts": acts.to(torch.float16).contiguous(), "index": index.to(torch.int32).contiguous()},
              str(tmp), metadata={"n_vectors": str(acts.shape[0])})
    tmp.replace(file)


def shard_length(file: Path, d_in: int | None = None) -> int:
    """The number of vectors in a shard, checking its header and size (a cut file fails here)."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            shape = handle.get_slice("acts").get_shape()
            index_shape = handle.get_slice("index").get_shape()
    except (SafetensorError, OSError, KeyError) as exc:
        raise SAEError(f"shard '{file}' is truncated or corrupted ({exc}); delete it and re-run `sae collect` "
                       "to collect it again") from None
    if len(shape) != 2 or index_shape != [shape[0], len(INDEX_FIELDS)] or (d_in is not None and shape[1] != d_in):
        raise SAEError(f"shard '{file}' has acts {shape} and index {index_shape}; expected [N, {d_in}] and "
                       f"[N, {len(INDEX_FIELDS)}]")
    return int(shape[0])


def read_shard(file: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(acts float16 [N, d_in], index int32 [N, 4]) of one shard."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            return handle.get_tensor("acts"), handle.get_tensor("index")
    except (SafetensorError, OSError, KeyError) as exc:
        raise SAEError(f"shard '{file}' is truncated or corrupted ({exc}); delete it and re-run `sae collect` "
                       "to collect it again") from None


def list_shards(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if SHARD_PATTERN.fullmatch(p.name))


def resolve_acts_folder(path: str | Path, block: str | None = None) -> Path:
    """The shard folder for ``block`` inside ``path`` (a shard folder, or a collect output with one per block)."""
    folder = Path(path)
    if not folder.is_dir():
        raise SAEError(f"acts is '{path}', which is not a folder; create it with `sae collect`")
    if (folder / MANIFEST_NAME).exists():
        return folder
    subfolders = sorted(p for p in folder.iterdir() if (p / MANIFEST_NAME).exists())
    if not subfolders:
        raise SAEError(f"acts folder '{path}' has no {MANIFEST_NAME} (nor block subfolders with one); "
                       "create it with `sae collect`")
    if block is not None:
        for sub in subfolders:
            if sub.name == block:
                return sub
        raise SAEError(f"acts folder '{path}' has no shards for block {block!r}; it has: "
                       f"{', '.join(p.name for p in subfolders)}")
    if len(subfolders) == 1:
        return subfolders[0]
    raise SAEError(f"acts folder '{path}' holds several blocks ({', '.join(p.name for p in subfolders)}); "
                   "name one with --block or give its subfolder")


class ActivationStore:
    """A shard folder opened for reading; every shard is checked (header and size) on opening."""

    def __init__(self, path: str | Path, block: str | None = None) -> None:
        self.folder = resolve_acts_folder(path, block)
        self.manifest = read_manifest(self.folder)
        self.shards = list_shards(self.folder)
        if not self.shards:
            raise SAEError(f"acts folder '{self.folder}' has no shards; run `sae collect` first")
        self.lengths = [shard_length(file, self.manifest.d_in) for file in self.shards]

    @property
    def d_in(self) -> int:
        return self.manifest.d_in

    @property
    def n_vectors(self) -> int:
        return sum(self.lengths)

    def prompts(self) -> list[str]:
        file = self.folder / PROMPTS_NAME
        if not file.exists():
            return []
        return list(json.loads(file.read_text()))

    def check_matches(self, config) -> None:
        """The shards must come from the SAE's model, block and site, with its width (``config``: SAEConfig)."""
        m = self.manifest
        if m.d_in != config.d_in:
            raise SAEError(f"acts '{self.folder}' have width {m.d_in}; the SAE reads width {config.d_in}")
        for name in ("block", "site", "model"):
            ours, theirs = getattr(config, name), getattr(m, name)
            if ours is not None and theirs is not None and ours != theirs:
                raise SAEError(f"acts '{self.folder}' come from {name} {theirs!r}; the SAE was trained on "
                               f"{name} {ours!r}")

    def read(self, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        return read_shard(self.shards[number])

    def iter_shards(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for number in range(len(self.shards)):
            yield self.read(number)

    def iter_batches(self, batch_size: int, max_vectors: int | None = None,
                     shard_numbers: list[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """In-order batches (acts float32, index) over the shards, up to ``max_vectors`` vectors."""
        left = max_vectors if max_vectors is not None else self.n_vectors
        for number in (shard_numbers if shard_numbers is not None else range(len(self.shards))):
            acts, index = self.read(number)
            for start in range(0, acts.shape[0], batch_size):
                if left <= 0:
                    return
                stop = min(start + batch_size, acts.shape[0], start + left)
                left -= stop - start
                yield acts[start:stop].float(), index[start:stop]

    def sample(self, n: int) -> torch.Tensor:
        """The first ``n`` vectors in shard order, float32 (deterministic: same on every process)."""
        parts, have = [], 0
        for acts, _ in self.iter_batches(n, max_vectors=n):
            parts.append(acts)
            have += acts.shape[0]
        return torch.cat(parts)[:n]


class ShuffledStream:
    """An endless, reproducible stream of shuffled batches from some shards of a store.

    Each epoch visits the shards in a seeded order, ``chunk_shards`` at a time; the vectors of a chunk are
    shuffled together. The stream is a pure function of (seed, shards, chunk_shards), so ``batches(start)``
    resumes at any vector position without reading what came before.
    """

    def __init__(self, store: ActivationStore, shard_numbers: list[int], batch_size: int, seed: int,
                 chunk_shards: int = 8) -> None:
        if not shard_numbers:
            raise SAEError("no shards to stream")
        self.store, self.shard_numbers, self.batch_size = store, shard_numbers, batch_size
        self.seed, self.chunk_shards = seed, max(1, chunk_shards)
        self.epoch_length = sum(store.lengths[n] for n in shard_numbers)
        self.last_shards: list[str] = []

    def _chunks(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = [self.shard_numbers[i] for i in torch.randperm(len(self.shard_numbers), generator=generator)]
        return [order[i:i + self.chunk_shards] for i in range(0, len(order), self.chunk_shards)]

    def _chunk_vectors(self, epoch: int, chunk_number: int, chunk: list[int]) -> torch.Tensor:
        acts = torch.cat([self.store.read(n)[0] for n in chunk])
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 10_007 + chunk_number)
        self.last_shards = [self.store.shards[n].name for n in chunk]
        return acts[torch.randperm(acts.shape[0], generator=generator)]

    def batches(self, start: int = 0) -> Iterator[torch.Tensor]:
        """Float32 batches of ``batch_size`` vectors, beginning at vector ``start`` of the stream."""
        epoch, offset = divmod(start, self.epoch_length)
        buffer = torch.empty(0, self.store.d_in, dtype=torch.float16)
        while True:
            for chunk_number, chunk in enumerate(self._chunks(epoch)):
                size = sum(self.store.lengths[n] for n in chunk)
                if offset >= size:
                    offset -= size
                    continue
                buffer = torch.cat([buffer, self._chunk_vectors(epoch, chunk_number, chunk)[offset:]])
                offset = 0
                position = 0
                while buffer.shape[0] - position >= self.batch_size:
                    yield buffer[position:position + self.batch_size].float()
                    position += self.batch_size
                buffer = buffer[position:]
            epoch += 1


def save_activations(folder: str | Path, acts: torch.Tensor, index: torch.Tensor | None = None,
                     shard_size: int = 65536, block: str = "synthetic", model: str = "synthetic",
                     site: str = "delta", prompts: list[str] | None = None) -> Path:
    """Write vectors [N, d_in] you already have (from elsewhere, or synthetic) as a shard folder.

    Without ``index`` each vector gets prompt id = its row, step 0, row 0, col 0.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if index is None:
        index = torch.zeros(acts.shape[0], len(INDEX_FIELDS), dtype=torch.int32)
        index[:, 0] = torch.arange(acts.shape[0])
    n_prompts = int(index[:, 0].max()) + 1 if acts.shape[0] else 0
    for number, start in enumerate(range(0, acts.shape[0], shard_size)):
        write_shard(folder / shard_name(number), acts[start:start + shard_size], index[start:start + shard_size])
    n_shards = -(-acts.shape[0] // shard_size)
    write_manifest(folder, Manifest(model=model, block=block, site=site, d_in=acts.shape[1], grid=[1, 1], height=0,
                                    width=0, num_inference_steps=1, step_indices=None, guidance_scale=None, seed=0,
                                    batch_size=shard_size, n_prompts=n_prompts,
                                    counts={"shards": n_shards, "expected_shards": n_shards,
                                            "vectors": acts.shape[0], "complete": 1}))
    if prompts is not None:
        write_json(folder / PROMPTS_NAME, prompts)
    return folder
