"""A feature repository: the set of definitions a user's module declares, validated as a whole.

Checks that need every definition at once live here (duplicate group versions, services
referring to groups that do not exist); single-object checks live on the objects.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from skewless.errors import DefinitionError
from skewless.language import Entity, FeatureGroup, FeatureRef, FeatureService, Role, Source


@dataclass(frozen=True)
class RoleAccess:
    """What a role resolves to in one repository: the group versions it may read (those its
    read patterns name, those of the services they name, and those it may write), the ones
    it may write, and the services whose every group it may read."""

    role: Role
    read_groups: tuple[FeatureGroup, ...]
    write_groups: tuple[FeatureGroup, ...]
    services: tuple[FeatureService, ...]

    def may_read(self, group: FeatureGroup) -> bool:
        return self.role.admin or any(g is group for g in self.read_groups)

    def may_read_pii(self, group: FeatureGroup) -> bool:
        """Whether the role reads the group's `pii` features in clear (it must read the group)."""
        return self.may_read(group) and self.role.reads_pii

    def may_write(self, group: FeatureGroup) -> bool:
        return self.role.admin or any(g is group for g in self.write_groups)

    def not_written(self, groups: Iterable[FeatureGroup]) -> list[FeatureGroup]:
        """Of a source's groups, those the role may not write: a push writes every group on
        its source, so the role may push to it only when this is empty."""
        return [g for g in groups if not self.may_write(g)]

    @property
    def group_refs(self) -> list[str]:
        return [g.ref for g in self.read_groups]

    @property
    def service_refs(self) -> list[str]:
        return [s.ref for s in self.services]


@dataclass
class FeatureRepository:
    """Every entity, source, group version and service of one feature repository."""

    groups: list[FeatureGroup]
    services: list[FeatureService] = field(default_factory=list)
    name: str = "features"
    roles: list[Role] = field(default_factory=list)
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
        self._check_roles()

    def _check_roles(self) -> None:
        """Every role once, and every pattern matching something: a pattern that matches no
        group or service is a typo, and a typo in an access rule must fail the load."""
        by_name: dict[str, Role] = {}
        for role in self.roles:
            if not isinstance(role, Role):
                raise DefinitionError(f"repository '{self.name}': {role!r} is not a Role")
            if role.name in by_name and by_name[role.name] != role:
                raise DefinitionError(f"role '{role.name}' is defined twice in repository '{self.name}'")
            by_name[role.name] = role
        self.roles = sorted(by_name.values(), key=lambda r: r.name)
        self._access: dict[str, RoleAccess] = {}
        group_refs = [g.ref for g in self.groups]
        service_refs = [s.ref for s in self.services]
        for role in self.roles:
            for kind, patterns, known in (
                ("read", role.read, group_refs + service_refs),
                ("write", role.write, group_refs),
            ):
                for pattern in patterns:
                    if not any(fnmatch.fnmatchcase(ref, pattern) for ref in known):
                        what = "feature group or feature service" if kind == "read" else "feature group"
                        raise DefinitionError(
                            f"role '{role.name}': {kind} pattern {pattern!r} matches no {what} of "
                            f"repository '{self.name}' (patterns are fnmatch over 'name:vN'; "
                            f"known: {', '.join(known) or 'none'})"
                        )
            self._access[role.name] = self._resolve_role(role)

    def _resolve_role(self, role: Role) -> RoleAccess:
        def matches(ref: str, patterns: tuple[str, ...] | list[str]) -> bool:
            return any(fnmatch.fnmatchcase(ref, p) for p in patterns)

        write = [g for g in self.groups if role.admin or matches(g.ref, role.write)]
        read = {id(g): g for g in self.groups if role.admin or matches(g.ref, role.read)}
        for service in self.services:
            if matches(service.ref, role.read):
                for ref in service.refs:
                    group = self.group(ref.group, ref.version)
                    read[id(group)] = group
        read.update((id(g), g) for g in write)
        readable = [g for g in self.groups if id(g) in read]
        services = [
            s
            for s in self.services
            if role.admin
            or matches(s.ref, role.read)
            or all(id(self.group(r.group, r.version)) in read for r in s.refs)
        ]
        return RoleAccess(role, tuple(readable), tuple(write), tuple(services))

    def role(self, name: str) -> Role:
        """The role named `name`; unknown names are an error listing the known ones."""
        return self.access(name).role

    def access(self, name: str) -> RoleAccess:
        """What role `name` may read and write in this repository."""
        try:
            return self._access[name]
        except KeyError:
            known = ", ".join(r.name for r in self.roles) or "none (FeatureRepository(roles=[...]))"
            raise DefinitionError(
                f"unknown role '{name}' in repository '{self.name}' (known: {known})"
            ) from None

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
    roles = [v for v in values if isinstance(v, Role)]
    if not groups:
        raise DefinitionError(f"module '{module.__name__}' defines no FeatureGroup")
    return FeatureRepository(
        groups=groups, services=services, roles=roles, name=module.__name__.rsplit(".", 1)[-1]
    )


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
