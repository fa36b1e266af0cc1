"""Named presets for the experiment configs (``test`` / ``tiny`` / ``paper`` ...), shared by every recipe."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def preset_settings(config_cls: type, presets: Mapping[str, Mapping[str, Any]], preset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``presets[preset]`` with ``overrides`` applied (``None`` values are ignored).

    Raises:
        ValueError: an unknown preset, or an override that is not a field of the dataclass ``config_cls``.
    """
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; available: {tuple(presets)}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; {config_cls.__name__} has {sorted(fields)}")
    return {**presets[preset], **{k: v for k, v in overrides.items() if v is not None}}
