"""Copy engines, by the name `copy.engine` and `--engine` use.

Each entry names the class implementing `mirror.engines.base.Engine`; it is imported only when
chosen, so an unused engine's library (docker, azure) is never loaded. A new engine is a module
of its own and one line here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import MirrorSettings
    from .base import Engine, Progress

ENGINES: dict[str, str] = {
    "registry": "mirror.engines.registry:RegistryEngine",  # OCI distribution API, registry to registry
    "docker": "mirror.engines.docker:DockerEngine",  # pull, tag, push through a Docker Engine API
    "acr-import": "mirror.engines.acr_import:AcrImportEngine",  # server-side: ARM importImage into an ACR
}
DEFAULT_ENGINE = "registry"


def engine_class(name: str) -> type[Engine]:
    from importlib import import_module

    module, _, attribute = ENGINES[name].partition(":")
    cls: type[Engine] = getattr(import_module(module), attribute)
    return cls


def create_engine(name: str, settings: MirrorSettings, *, progress: Progress | None = None) -> Engine:
    return engine_class(name)(settings, progress=progress)
