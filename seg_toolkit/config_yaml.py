"""Config files -> plain data: YAML read with the safe loader (a key twice in one mapping refused), ``base:`` chains merged, ``--set``
overrides applied. Every way a file can fail is a :class:`~seg_toolkit.errors.ConfigError` naming it;
turning the data into typed sections is :mod:`seg_toolkit.config_types`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["apply_overrides", "read_yaml", "read_with_bases"]


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
    node[keys[-1]] = value


def apply_overrides(data: dict, overrides: list | None) -> dict:
    """Apply ``key.path=value`` strings; values are parsed as YAML (``3``, ``true``, ``[1, 2]``). A ``(key.path,
    value)`` pair sets the value as it is (a run folder's name is a name, never YAML: ``2024``, ``exp #2``)."""
    for item in overrides or []:
        if isinstance(item, tuple):
            _set_dotted(data, item[0], item[1])
            continue
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. train.epochs=3")
        key, raw = item.split("=", 1)
        if key.strip() == "base":  # was "unknown config key 'base'", a key the files do take
            raise ConfigError("--set base: a config file's base: is merged when the file is read, before --set applies; "
                              "write base: in the YAML file, or name the base file itself and --set the keys that differ")
        try:
            value = yaml.load(raw, Loader=_SafeUniqueLoader) if raw != "" else ""  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as e:  # its message spans lines and points into "<unicode string>": one line here
            what = " ".join(str(e).replace('in "<unicode string>", ', "").split())
            raise ConfigError(f"--set {key}: cannot parse value {raw!r} as YAML ({what}); for text, quote it: "
                              f"--set '{key}=\"{raw}\"'") from None
        except ConfigError as e:  # base 60 (1:30) or octal (0042): the loader's words, with the key they were for
            quote = f"; write it as --set '{key}=\"{raw}\"' to keep the text" if "base-60" in str(e) or "octal" in str(e) else ""
            raise ConfigError(f"--set {key}: {e}{quote}") from None
        if " #" in raw and "#" not in str(value):  # YAML took the rest for a comment
            raise ConfigError(f"--set {key}: {raw!r} holds ' #', which YAML reads as the start of a comment ({value!r} "
                              f"would be kept); quote the value: --set '{key}=\"{raw}\"'")
        _set_dotted(data, key.strip(), value)
    return data


class _SafeUniqueLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (plain PyYAML keeps the last silently: a second
    ``train:`` section replaced the first whole, and its epochs fell back to the default)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                    seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base loader names it
                    continue
                if first is not None:
                    mark = key_node.start_mark
                    where = f"{mark.name}: line {mark.line + 1}: " if mark.name != "<unicode string>" else ""
                    raise ConfigError(f"{where}key {key!r} is given twice in one mapping (first on line {first}); YAML "
                                      "would keep only the last: merge them into one")
        return super().construct_mapping(node, deep=deep)

    def _no_base_60(self, node, base):
        """YAML 1.1 reads ``1:30`` as 90 (base 60): ``time_budget: 1:30`` was 90 seconds; refused, naming the line."""
        if ":" in str(node.value):
            where = f"{node.start_mark.name}: line {node.start_mark.line + 1}: " if node.start_mark.name != "<unicode string>" else ""
            raise ConfigError(f"{where}{node.value!r} is a base-60 number to YAML ({node.value} -> "
                              f"{base(self, node)}); write a duration as 1h30m, or quote the value")
        return base(self, node)

    def construct_yaml_int(self, node):
        if _OCTAL.fullmatch(str(node.value)):
            where = f"{node.start_mark.name}: line {node.start_mark.line + 1}: " if node.start_mark.name != "<unicode string>" else ""
            raise ConfigError(f"{where}{node.value!r} is an octal number to YAML 1.1 ({node.value} -> "
                              f"{yaml.SafeLoader.construct_yaml_int(self, node)}); write it without the leading zero, or "
                              "quote it")
        return self._no_base_60(node, yaml.SafeLoader.construct_yaml_int)

    def construct_yaml_float(self, node):
        return self._no_base_60(node, yaml.SafeLoader.construct_yaml_float)


_SafeUniqueLoader.add_constructor("tag:yaml.org,2002:int", _SafeUniqueLoader.construct_yaml_int)
_SafeUniqueLoader.add_constructor("tag:yaml.org,2002:float", _SafeUniqueLoader.construct_yaml_float)
# YAML 1.2's floats without a dot (1e-3, 5E4): YAML 1.1 (PyYAML) reads them as strings, which reached smp / timm as
# text wherever the config does not type the value (model.params: drop_path_rate: 1e-1 failed when fold 0 built its
# model). Checked after YAML 1.1's own int and float patterns, so 42 stays an int and 1.5e-3 a float as before.
_SafeUniqueLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                        list("-+0123456789"))


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from ``path`` (safe loader); every way it can fail is a :class:`ConfigError` naming it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; expected a YAML config file (or a run folder holding config.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open("r", encoding="utf-8-sig") as fh:
            data = yaml.load(fh, Loader=_SafeUniqueLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid (safe) YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); save the config as UTF-8") from None
    if data is None:  # every value a default (data.root data/demo...): the commands' errors then named the demo's files
        raise ConfigError(f"{path}: the config file holds no keys (empty, or comments only); write at least data.root, "
                          "or `base:` another config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys at the top level, got {type(data).__name__}")
    return data


def read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """``path``'s values over those of its ``base:`` file, recursively (a -> b -> c); a cycle is named."""
    here = path.resolve()
    if here in chain:
        names = " -> ".join(str(p) for p in (*chain[chain.index(here):], here))
        raise ConfigError(f"base: the configs name each other in a cycle: {names}")
    data = read_yaml(path)
    base_path = _base_path(path, data)
    if base_path is None:
        return data
    return _deep_merge(read_with_bases(base_path, (*chain, here)), data)


def _base_path(path: Path, data: dict) -> Path | None:
    """The file ``path``'s ``base:`` names (taken out of ``data``; relative to ``path``), None without one."""
    if "base" not in data:
        return None
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: expected the path of another YAML file (relative to this one), got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file() and not base_path.is_dir():
        raise ConfigError(f"{path}: base: {base!r} not found (looked for {base_path})")
    return base_path


def config_files(path: Path) -> list[Path]:
    """``path`` and the ``base:`` files it stands on (resolved), as :func:`read_with_bases` follows them: the files a
    command reads its config from."""
    out: list[Path] = []
    here: Path | None = Path(path)
    while here is not None and here.is_file() and here.resolve() not in out:  # a cycle: read_with_bases names it
        out.append(here.resolve())
        here = _base_path(here, read_yaml(here))
    return out


#: mappings a child config gives whole (merged into the base's, a child could not drop a key of them:
#: ``model: {params: {}}`` over a base with ``encoder_depth: 4`` kept it)
_WHOLE = ("loss", "loss_aux", "loss_params", "params", "mask_values")
#: YAML 1.1 integers with a leading zero are octal: ``seed: 0042`` was 34
_OCTAL = re.compile(r"[-+]?0[0-7_]+")


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in _WHOLE:
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
