"""Start-up hook shipped with jora-peft (loaded by ``jora_peft_hint.pth``; costs one tiny import).

In an interpreter that has not imported ``jora_peft``, PEFT knows nothing of JORA: loading a JORA adapter
would fail with a bare ``KeyError: 'JORA'``. Once ``peft.config`` is imported, this hook wraps the two
places where PEFT resolves a saved ``peft_type`` so that a JORA adapter gives a clear error telling the user
to ``import jora_peft`` — or, with ``JORA_PEFT_AUTOLOAD=1`` in the environment, imports it automatically.
Nothing else in PEFT changes.
"""

from __future__ import annotations

import functools
import os
import sys

TYPE_CHECKING = False  # not `from typing import ...`: typing alone costs ms at every start-up

if TYPE_CHECKING:  # only for annotations: this module must stay cheap to import at start-up
    import importlib.machinery
    from types import ModuleType
    from typing import Any

PEFT_TYPE = "JORA"
MESSAGE = (
    "This adapter was made with JORA (peft_type='JORA'), which PEFT only knows after `import jora_peft`. "
    "Add `import jora_peft` before loading it, or set JORA_PEFT_AUTOLOAD=1 to import it automatically."
)


def _ensure_jora(peft_type: Any) -> None:
    if str(getattr(peft_type, "value", peft_type)) != PEFT_TYPE or "jora_peft" in sys.modules:
        return
    if os.environ.get("JORA_PEFT_AUTOLOAD", "0") == "1":
        import jora_peft  # noqa: F401  (registers the method)

        return
    raise ValueError(MESSAGE)


def _patch(config_module: ModuleType) -> None:
    mixin = config_module.PeftConfigMixin
    original_from_peft_type = mixin.from_peft_type.__func__

    @functools.wraps(original_from_peft_type)
    def from_peft_type(cls: type, **kwargs: Any) -> Any:
        _ensure_jora(kwargs.get("peft_type"))
        return original_from_peft_type(cls, **kwargs)

    mixin.from_peft_type = classmethod(from_peft_type)
    if hasattr(mixin, "_get_peft_type"):
        original_get = mixin._get_peft_type.__func__

        @functools.wraps(original_get)
        def _get_peft_type(cls: type, *args: Any, **kwargs: Any) -> Any:
            peft_type = original_get(cls, *args, **kwargs)
            _ensure_jora(peft_type)
            return peft_type

        mixin._get_peft_type = classmethod(_get_peft_type)


class _Loader:
    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._wrapped.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._wrapped.exec_module(module)
        _patch(module)


class _Finder:
    """Wraps the loader of ``peft.config`` only; every other import passes through untouched."""

    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "peft.config":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    """Install the hook once (called from the .pth file at interpreter start-up)."""
    if "peft.config" in sys.modules:
        _patch(sys.modules["peft.config"])
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
