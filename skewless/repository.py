"""A feature repository: the set of definitions a user's module declares, validated as a whole.

Checks that need every definition at once live here (duplicate group versions, services
referring to groups that do not exist); single-object checks live on the objects.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from skewless.errors import DefinitionError
from skewless.language import Entity, FeatureGroup, FeatureRef, FeatureService, Source


@dataclass
class FeatureRepository:
    """Every entity, source, group version and service of one feature repository."""

    groups: list[FeatureGroup]
    services: list[FeatureService] = field(default_factory=list)
    name: str = "features"
    lock_path: Path | None = None  # the lock file checked at load, when loaded from a module
    # anchored at load from a module file (skewless.config.locate): the folder relative
    # source paths are resolved against, and the state folder (SKEWLESS_HOME wins)
    root: Path | None = None
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        self._groups: dict[tuple[str, int], FeatureGroup] = {}
        for group in self.groups:
            if not isinstance(group, FeatureGroup):
                raise DefinitionError(f"repository '{self.name}': {group!r} is not a FeatureGroup")
            key = (group.name, group.version)
            if key in self._groups and self._groups[key] is not group:
                raise DefinitionError(
                    f"feature group '{group.ref}' is defined twice in repository '{self.name}'; "
                    "bump the version of one of them"
                )
            self._groups[key] = group
        self.groups = sorted(self._groups.values(), key=lambda g: (g.name, g.version))
        self._check_unique("entity", [g.entity for g in self.groups])
        self._check_unique("source", [g.source for g in self.groups])
        services: dict[tuple[str, int], FeatureService] = {}
        for service in self.services:
            key = (service.name, service.version)
            if key in services and services[key] is not service:
                raise DefinitionError(f"feature service '{service.ref}' is defined twice")
            services[key] = service
            for ref in service.refs:
                try:
                    self.resolve(ref)
                except DefinitionError as exc:
                    raise DefinitionError(f"feature service '{service.ref}': {exc}") from None
        self.services = sorted(services.values(), key=lambda s: (s.name, s.version))
        for group in self.groups:
            reference = group.drift.reference_service if group.drift is not None else None
            if reference is not None:
                try:
                    service = self.service(reference)
                except DefinitionError as exc:
                    raise DefinitionError(f"feature group '{group.ref}': drift reference: {exc}") from None
                if not any((r.group, r.version) == (group.name, group.version) for r in service.refs):
                    raise DefinitionError(
                        f"feature group '{group.ref}': drift reference '{reference}' "
                        "does not pin this version"
                    )
        self._check_unique("source", self.sources)

    def _check_unique(self, what: str, objects: Iterable[Entity | Source]) -> None:
        by_name: dict[str, Entity | Source] = {}
        for obj in objects:
            other = by_name.setdefault(obj.name, obj)
            if other != obj:
                raise DefinitionError(
                    f"two different {what} definitions are named '{obj.name}' in repository '{self.name}'"
                )

    @property
    def entities(self) -> list[Entity]:
        return list({g.entity.name: g.entity for g in self.groups}.values())

    @property
    def sources(self) -> list[Source]:
        """Feature sources and label sources, each once."""
        found = {g.source.name: g.source for g in self.groups}
        for service in self.services:
            if service.labels is not None:
                found.setdefault(service.labels.name, service.labels)
        return list(found.values())

    def group(self, name: str, version: int) -> FeatureGroup:
        try:
            return self._groups[(name, version)]
        except KeyError:
            known = sorted(g.ref for g in self.groups if g.name == name)
            hint = f" (known versions: {', '.join(known)})" if known else ""
            raise DefinitionError(f"unknown feature group '{name}:v{version}'{hint}") from None

    def resolve(self, ref: FeatureRef) -> tuple[FeatureGroup, list[str]]:
        """The group a reference points at and the feature names it selects."""
        group = self.group(ref.group, ref.version)
        if ref.feature is None:
            return group, group.feature_names
        if ref.feature not in group.feature_names:
            raise DefinitionError(
                f"unknown feature '{ref}': group '{group.ref}' has {', '.join(group.feature_names)}"
            )
        return group, [ref.feature]

    def service(self, ref: str) -> FeatureService:
        parsed = FeatureRef.parse(ref if ":" in ref else f"{ref}:v1")
        for service in self.services:
            if service.name == parsed.group and service.version == parsed.version:
                return service
        raise DefinitionError(
            f"unknown feature service '{ref}' (known: {', '.join(s.ref for s in self.services) or 'none'})"
        )


def collect(module: ModuleType) -> FeatureRepository:
    """Build a repository from a module: an explicit `repository` object, else its globals."""
    explicit = getattr(module, "repository", None)
    if isinstance(explicit, FeatureRepository):
        return explicit
    values = list(vars(module).values())
    groups = [v for v in values if isinstance(v, FeatureGroup)]
    services = [v for v in values if isinstance(v, FeatureService)]
    if not groups:
        raise DefinitionError(f"module '{module.__name__}' defines no FeatureGroup")
    return FeatureRepository(groups=groups, services=services, name=module.__name__.rsplit(".", 1)[-1])


def load_repository(target: str | Path | ModuleType) -> FeatureRepository:
    """Load a repository from a module object, a dotted module name or a Python file path.

    The module's `skewless.lock.json` (beside it) is checked: a group version whose
    definition changed since it was first loaded is refused; new versions are recorded.
    """
    return _locked(_load_module(target))


def lock_path(module: ModuleType) -> Path | None:
    """`skewless.lock.json` beside the module's file (None for modules without a file)."""
    from skewless.registry.lock import LOCK_NAME

    file = getattr(module, "__file__", None)
    return Path(file).resolve().parent / LOCK_NAME if file else None


def _locked(module: ModuleType) -> FeatureRepository:
    from skewless.registry.lock import apply_lock

    repo = collect(module)
    file = getattr(module, "__file__", None)
    if file:
        anchor(repo, file)
    path = lock_path(module)
    if path is not None:
        apply_lock(repo.groups, path, in_use=_in_use_checker(repo))
        repo.lock_path = path
    return repo


def _in_use_checker(repo: FeatureRepository) -> Callable[[FeatureGroup], bool] | None:
    """Whether a version has values in the offline store this repository uses by default
    (its version folder exists: materialized, or pushed to). A filesystem check only: loading
    must never start Redis. None (every version frozen) when the repository has no anchor."""
    if repo.state_dir is None:
        return None
    from skewless.config import offline_root
    from skewless.storage.offline import OfflineStore

    return OfflineStore(offline_root(repo.state_dir)).in_use


def anchor(repo: FeatureRepository, module_file: str | Path) -> None:
    """Tie the repository to its own folder rather than the current one: its state folder
    (`skewless.config.home`) and its relative `FileSource` paths, resolved against the
    folder of its `skewless.toml` (else the module's folder). Run from any folder, a command
    then reads the same data and the same embedded Redis (issue 12 item 3)."""
    from skewless.config import home, locate
    from skewless.language.source import FileSource

    location = locate(module_file)
    repo.root = location.root
    repo.state_dir = home(module_file)
    for source in repo.sources:
        if isinstance(source, FileSource) and not Path(source.path).is_absolute():
            # sources are frozen definitions; the path is not part of the fingerprint
            object.__setattr__(source, "path", str(location.root / source.path))


def _load_module(target: str | Path | ModuleType) -> ModuleType:
    if isinstance(target, ModuleType):
        return target
    text = str(target)
    if text.endswith(".py") or Path(text).exists():
        path = Path(text).resolve()
        if path.is_dir():
            path = path / "__init__.py"
        if not path.is_file():
            # a clear one-line error, not importlib's traceback: a wrong --repo or working
            # directory is the usual cause, and the path shows which
            raise DefinitionError(
                f"no feature repository at {text} ({path} does not exist); pass the path of the "
                "module that defines the feature groups, e.g. examples/card_fraud/features.py"
            )
        name = f"skewless_repo_{path.parent.name}_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise DefinitionError(f"cannot load a feature repository from {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        from skewless.config import _loading

        _loading.append(path)  # `home()` called while the module runs is anchored to it
        try:
            spec.loader.exec_module(module)
        finally:
            _loading.pop()
        return module
    try:
        return importlib.import_module(text)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (text == exc.name or text.startswith(exc.name + ".")):
            raise  # the repository itself imports something missing: that traceback helps
        raise DefinitionError(
            f"no feature repository {text!r}: not a .py file and no module of that name can be "
            "imported (pass a file path such as examples/card_fraud/features.py)"
        ) from None
