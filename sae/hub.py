"""Hugging Face URIs (``hf://[models/|datasets/|spaces/]owner/name[@revision][/path]``) resolved to local folders.

The syntax is huggingface_hub's own (``parse_hf_uri``); a small parser of the same rules stands in for versions of
huggingface_hub that predate it. A URI resolves through ``snapshot_download``, which reads the local cache when
``HF_HUB_OFFLINE=1``; only the files an SAE folder may hold are fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from .errors import SAEError
from .locate import describe_folder

PREFIX = "hf://"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# What an SAE folder may hold (ours and SAEPaint's, with the files beside them); nothing else is downloaded.
SAE_FILE_PATTERNS = ("*.json", "*.safetensors", "*.pth", "*.pt")


@dataclass(frozen=True)
class HubPath:
    """A parsed ``hf://`` URI: the repository (type and id), the revision (None: the default branch) and a path."""

    repo_type: str  # "model", "dataset" or "space"
    repo_id: str
    revision: str | None = None
    path: str = ""

    def __str__(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        revision = f"@{self.revision}" if self.revision is not None else ""
        return f"{PREFIX}{prefix}{self.repo_id}{revision}" + (f"/{self.path}" if self.path else "")


def is_uri(text: str | Path) -> bool:
    return str(text).startswith(PREFIX)


def parse_uri(text: str, what: str = "hf URI") -> HubPath:
    """``text`` as a ``HubPath``; a bad form raises an ``SAEError`` that says which part is wrong."""
    if not is_uri(text):
        raise SAEError(f"{what} '{text}' must start with {PREFIX}; the form is {_FORM}")
    try:
        from huggingface_hub import parse_hf_uri
    except ImportError:  # huggingface_hub before parse_hf_uri
        repo_type, repo_id, revision, path = _parse_fallback(text, what)
    else:
        try:
            uri = parse_hf_uri(text)
        except ValueError as exc:  # HfUriError
            raise SAEError(f"{what} '{text}': {_reason(exc, text)}; the form is {_FORM}") from None
        repo_type, repo_id, revision, path = uri.type, uri.id, uri.revision, uri.path_in_repo
    if repo_type not in REPO_TYPES.values():
        raise SAEError(f"{what} '{text}': a {repo_type} is not a repository SAEs can be read from; "
                       f"allowed: {', '.join(p + '/' for p in REPO_TYPES)} or no prefix (a model)")
    return HubPath(repo_type, repo_id, revision, path.strip("/"))


_FORM = "hf://[models/|datasets/|spaces/]owner/name[@revision][/path]"


def _reason(exc: ValueError, text: str) -> str:
    """huggingface_hub's reason without its own "Invalid HF URI '...'." preamble."""
    message = str(exc).strip()
    preamble = f"Invalid HF URI '{text}'."
    return (message[len(preamble):].strip() if message.startswith(preamble) else message).rstrip(".")


def _parse_fallback(text: str, what: str) -> tuple[str, str, str | None, str]:
    """The rules of huggingface_hub's ``parse_hf_uri`` for repositories, for versions without it."""
    def bad(reason: str) -> SAEError:
        return SAEError(f"{what} '{text}': {reason}; the form is {_FORM}")

    body = text[len(PREFIX):].strip("/")
    if not body:
        raise bad(f"Empty body after '{PREFIX}'")
    first, _, rest = body.partition("/")
    repo_type = "model"
    if first in REPO_TYPES:
        repo_type, body = REPO_TYPES[first], rest
    elif first in REPO_TYPES.values():
        raise bad(f"Type prefix must be plural, got '{first}/'. Did you mean '{first}s/'?")
    before_at = body.split("@", 1)[0]
    if "@" in body and before_at.count("/") <= 1:
        repo_id, rev_and_path = body.split("@", 1)
        if rev_and_path.startswith("refs/pr/") or rev_and_path.startswith("refs/convert/"):
            parts = rev_and_path.split("/")
            revision, path = "/".join(parts[:3]), "/".join(parts[3:])
        else:
            revision, _, path = rev_and_path.partition("/")
        revision = unquote(revision)
        if not revision:
            raise bad("Empty revision after '@'")
    else:
        parts = body.split("/", 2)
        repo_id, revision, path = "/".join(parts[:2]), None, parts[2] if len(parts) > 2 else ""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise bad(f"Repository id must be 'namespace/name', got '{repo_id}'")
    if "//" in path:
        raise bad(f"Path must not contain empty segments (got '{path}')")
    return repo_type, repo_id, revision, path


def resolve_uri(text: str, what: str = "hf URI") -> Path:
    """The local folder an ``hf://`` URI names: downloaded by huggingface_hub, or found in its cache offline."""
    uri = parse_uri(text, what)
    from huggingface_hub import snapshot_download

    prefix = f"{uri.path}/" if uri.path else ""
    try:
        root = Path(snapshot_download(uri.repo_id, repo_type=uri.repo_type, revision=uri.revision,
                                      allow_patterns=[prefix + p for p in SAE_FILE_PATTERNS]))
    except Exception as exc:  # huggingface_hub raises many types: offline, not found, gated, HTTP
        raise SAEError(f"{what} '{text}' could not be read from the Hugging Face Hub or its local cache: "
                       f"{_first_line(exc)}") from None
    folder = root / uri.path if uri.path else root
    if not folder.is_dir():
        raise SAEError(f"{what} '{text}': the {uri.repo_type} {uri.repo_id} has no folder '{uri.path}'; "
                       f"{_what_was_found(uri, root)}")
    return folder


def _what_was_found(uri: HubPath, root: Path) -> str:
    """The repository's top-level entries and SAE folders: from the hub's file list when online, else from the
    local snapshot."""
    from huggingface_hub import HfApi, constants

    if not constants.HF_HUB_OFFLINE:
        try:
            return _describe_files(HfApi().list_repo_files(uri.repo_id, repo_type=uri.repo_type,
                                                           revision=uri.revision))
        except Exception:  # unreachable: say what the cache holds
            pass
    if root.is_dir() and any(root.iterdir()):
        return f"in the local cache, {describe_folder(root)}"
    return "nothing of it is in the local cache"


def _describe_files(files: list[str]) -> str:
    top = sorted({f.split("/", 1)[0] + ("/" if "/" in f else "") for f in files})
    folders = {f.rsplit("/", 1)[0] if "/" in f else "." for f in files}
    by_name = set(files)
    saes = sorted(d for d in folders
                  if f"{d}/config.json" in by_name and ({f"{d}/sae.safetensors", f"{d}/state_dict.pth"} & by_name))
    text = f"it holds {', '.join(top[:12]) or 'nothing'}" + (" ..." if len(top) > 12 else "")
    if saes:
        text += f"; SAE folders: {', '.join(saes[:8])}" + (" ..." if len(saes) > 8 else "")
    return text


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


__all__ = ["HubPath", "is_uri", "parse_uri", "resolve_uri"]
