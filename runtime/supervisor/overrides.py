"""Running an agent from a release: the override a rollout sets and clears.

An agent's spec comes from the config; a `ReleaseOverride` replaces what it
runs (a task or process agent's entry file, an exec agent's program) with the
copy in a release folder, and adds `OUTPOST_RELEASE` to its environment. An
override is set for an agent name, or for the name of an agent with
instances (then it applies to every instance without one of its own: that is
how a canary runs one instance on the new release while the rest stay).

Before every start of an agent that runs from a release, the folder is
hashed again and compared with the release's digest (`verify`, given by the
composition root: runtime.releases.verify): a tampered or half-written
release is refused, the start fails with the reason, and a `release-refused`
event says so.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runtime.config import AgentSpec

RELEASE_ENV = "OUTPOST_RELEASE"


@dataclass(frozen=True)
class ReleaseOverride:
    """Run an agent from the release in folder `root`, which must hash to `digest`.

    `entry` ("file.py:function", relative to root) for task and process agents;
    `program` (a path relative to root) for exec agents: it replaces the first
    argument of the command with the same file name, else the command itself.
    """

    release: str
    root: str
    digest: str
    entry: str | None = None
    program: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ReleaseOverride:
        """From a control method's plain data (TypeError/KeyError if malformed)."""
        def text(key: str, required: bool = True) -> str | None:
            value = params.get(key)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not value:
                raise ValueError(f"release.{key} must be a non-empty string")
            return value
        override = cls(text("release"), text("root"), text("digest"),
                       text("entry", False), text("program", False))
        if not os.path.isabs(override.root):
            raise ValueError("release.root must be an absolute path")
        return override

    def to_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def apply(self, spec: AgentSpec) -> AgentSpec:
        """`spec` running this release's code."""
        env = tuple(sorted({**dict(spec.env), RELEASE_ENV: self.release}.items()))
        if spec.kind == "exec":
            program = os.path.join(self.root, self.program or os.path.basename(spec.command[0]))
            argv = list(spec.command)
            name = os.path.basename(program)
            at = next((i for i, a in enumerate(argv) if os.path.basename(a) == name), 0)
            argv[at] = program
            return dataclasses.replace(spec, command=tuple(argv), env=env)
        entry = self.entry or default_entry(spec)
        return dataclasses.replace(spec, entry=os.path.join(self.root, entry), env=env)


def default_entry(spec: AgentSpec) -> str:
    """What a release of `spec`'s code runs when a deploy names no entry: the config
    entry's file name (or module path as a file) and function, relative to the release."""
    target, _, func = (spec.entry or "").rpartition(":")
    if target.endswith(".py"):
        return f"{os.path.basename(target)}:{func}"
    return f"{target.replace('.', '/')}.py:{func}"


class Overrides:
    """The overrides in force, and the config specs they apply to."""

    def __init__(self, verify: Callable[[str, str], None] | None = None) -> None:
        self._verify = verify
        self._base: dict[str, AgentSpec] = {}
        self._by_name: dict[str, ReleaseOverride] = {}

    def shape(self, specs: Iterable[AgentSpec]) -> tuple[AgentSpec, ...]:
        """Remember `specs` as the config's and return them as they run (overrides applied)."""
        specs = tuple(specs)
        self._base = {s.name: s for s in specs}
        return tuple(self.effective(s.name) for s in specs)

    def of(self, name: str) -> ReleaseOverride | None:
        """The override agent `name` runs with: its own, else its instances' group's."""
        found = self._by_name.get(name)
        if found is None:
            spec = self._base.get(name)
            if spec is not None and spec.instance_of is not None:
                found = self._by_name.get(spec.instance_of)
        return found

    def effective(self, name: str) -> AgentSpec:
        """Agent `name`'s spec as it runs (KeyError for an agent not in the config)."""
        spec = self._base[name]
        override = self.of(name)
        return spec if override is None else override.apply(spec)

    def set(self, name: str, override: ReleaseOverride | None) -> None:
        """Run `name` (an agent, or an agent with instances) from `override` (None: clear)."""
        if override is None:
            self._by_name.pop(name, None)
        else:
            self._by_name[name] = override

    def check(self, name: str) -> str | None:
        """Why agent `name` must not start now (its release fails verification), or None."""
        override = self.of(name)
        if override is None or self._verify is None:
            return None
        try:
            self._verify(override.root, override.digest)
        except Exception as exc:  # the verifier's refusal, whatever its type: say why
            return f"release {override.release} failed verification: {exc}"
        return None

    def release_of(self, name: str) -> str | None:
        """The release agent `name` runs (None: the config's own code)."""
        override = self.of(name)
        return None if override is None else override.release
