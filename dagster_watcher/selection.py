"""What one dbt invocation runs, decided by dbt's own selection code before dbt starts.

The user's dbt flags (resource ``extra_flags`` and per-call ``extra_args``) are split into the flags
that select nodes (:class:`DbtSelectionFlags`) and the rest. The exact node set of a selection is what
``dbt ls`` prints for the same flags, state and vars: in this process through ``dbtRunner`` over the
definition's manifest when dbt is importable (no parse, no dbt start), else with ``dbt ls`` of the
environment that runs dbt. The producer intersects the Dagster selection with the user's flags, so a
user ``--select`` narrows a subset instead of widening it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DbtSelectionError, WatcherConfigError

#: The resource types ``dbt build`` runs that can have a Dagster home (asset, check, observation).
BUILD_RESOURCE_TYPES = ("model", "seed", "snapshot", "test", "unit_test")

# Flags that take several values (dbt's MultiOption: every argument up to the next option).
_MULTI = {
    "--select": "select",
    "-s": "select",
    "--models": "select",
    "-m": "select",
    "--exclude": "exclude",
    "--resource-type": "resource_types",
    "--resource-types": "resource_types",
    "--exclude-resource-type": "exclude_resource_types",
    "--exclude-resource-types": "exclude_resource_types",
}
# Selection flags with one value.
_SINGLE = {"--selector": "selector", "--indirect-selection": "indirect_selection"}
# Flags that change what a selection means (state comparison, deferral); ls and build both get them.
_STATE_WITH_VALUE = {"--state", "--defer-state"}
_STATE_SWITCHES = {"--defer", "--no-defer", "--favor-state", "--no-favor-state"}


@dataclass(frozen=True)
class DbtSelectionFlags:
    """The node-selecting part of a dbt command line.

    Example::

        flags, rest = DbtSelectionFlags.split(["--exclude", "stg_payments+", "--full-refresh"])
        assert flags.exclude == ("stg_payments+",) and rest == ["--full-refresh"]
    """

    select: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    selector: str | None = None
    resource_types: tuple[str, ...] = ()
    exclude_resource_types: tuple[str, ...] = ()
    indirect_selection: str | None = None
    state_args: tuple[str, ...] = ()
    """``--state``/``--defer``/... as given: they change what a selection means, so ls and build get them."""

    @classmethod
    def split(cls, args: Sequence[str]) -> tuple[DbtSelectionFlags, list[str]]:
        """Split dbt arguments into selection flags and everything else (kept in order).

        Raises:
            WatcherConfigError: a selection flag without its value.
        """
        values: dict[str, Any] = {"select": [], "exclude": [], "resource_types": [], "exclude_resource_types": []}
        state: list[str] = []
        rest: list[str] = []
        args = list(args)
        i = 0
        while i < len(args):
            arg = args[i]
            name, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            if name in _MULTI:
                collected = inline.split() if inline else []
                i += 1
                while i < len(args) and not args[i].startswith("-"):
                    collected.extend(args[i].split())
                    i += 1
                if not collected:
                    raise WatcherConfigError(f"dbt flag {name} needs a value (in extra_flags/extra_args: {args!r}).")
                values[_MULTI[name]].extend(collected)
                continue
            if name in _SINGLE or name in _STATE_WITH_VALUE:
                if inline:
                    value, i = inline, i + 1
                elif i + 1 < len(args):
                    value, i = args[i + 1], i + 2
                else:
                    raise WatcherConfigError(f"dbt flag {name} needs a value (in extra_flags/extra_args: {args!r}).")
                if name in _SINGLE:
                    values[_SINGLE[name]] = value
                else:
                    state += [name, value]
                continue
            if name in _STATE_SWITCHES:
                state.append(name)
            else:
                rest.append(arg)
            i += 1
        flags = cls(
            select=tuple(values["select"]),
            exclude=tuple(values["exclude"]),
            selector=values.get("selector"),
            resource_types=tuple(values["resource_types"]),
            exclude_resource_types=tuple(values["exclude_resource_types"]),
            indirect_selection=values.get("indirect_selection"),
            state_args=tuple(state),
        )
        return flags, rest

    @property
    def selects_nodes(self) -> bool:
        """True when these flags narrow what dbt runs (state flags alone do not)."""
        return bool(
            self.select
            or self.exclude
            or self.selector
            or self.resource_types
            or self.exclude_resource_types
            or self.indirect_selection
        )

    def args(self) -> list[str]:
        """The selection flags as dbt arguments (state flags not included)."""
        out: list[str] = []
        if self.select:
            out += ["--select", *self.select]
        if self.exclude:
            out += ["--exclude", *self.exclude]
        if self.selector:
            out += ["--selector", self.selector]
        for rtype in self.resource_types:
            out += ["--resource-type", rtype]
        for rtype in self.exclude_resource_types:
            out += ["--exclude-resource-type", rtype]
        if self.indirect_selection:
            out += ["--indirect-selection", self.indirect_selection]
        return out

    def describe(self) -> str:
        """The flags as a user wrote them, for messages: ``--exclude stg_payments+``."""
        return shlex.join(self.args() + list(self.state_args))


@dataclass
class SelectionQuery:
    """One question for dbt's selector: which unique_ids do these flags select?"""

    flags: DbtSelectionFlags
    common_args: Sequence[str] = ()
    """``--project-dir``, ``--profiles-dir``, ``--target``, ``--vars``... exactly as the build gets them."""
    extra: Sequence[str] = field(default_factory=list)

    def ls_args(self, target_path: str) -> list[str]:
        args = ["ls", *self.common_args, "--target-path", target_path, *self.flags.state_args]
        args += ["--output", "json", "--output-keys", "unique_id", "--log-level", "none", "--log-level-file", "none"]
        if not self.flags.resource_types:
            for rtype in BUILD_RESOURCE_TYPES:
                args += ["--resource-type", rtype]
        return [*args, *self.flags.args(), *self.extra]


def _unique_ids(lines: Iterable[Any]) -> frozenset[str]:
    out = set()
    for line in lines:
        text = str(line).strip()
        if not text.startswith("{"):
            continue
        try:
            unique_id = json.loads(text).get("unique_id")
        except ValueError:
            continue
        if unique_id:
            out.add(str(unique_id))
    return frozenset(out)


class SelectionResolver:
    """Answers :class:`SelectionQuery`s with dbt's own selection code.

    Args:
        manifest: the definition's manifest.json; in this process dbt selects over it without a parse.
        target_path: where ``dbt ls`` may write (a scratch folder of the build's target path).
        dbt_executable: the dbt of the environment that runs the build, used when dbt is not
            importable here.
        cwd: the directory dbt runs in.
        env: extra environment for dbt.
    """

    def __init__(
        self,
        manifest: Mapping[str, Any],
        *,
        target_path: str,
        dbt_executable: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        in_process: bool = True,
    ) -> None:
        self.manifest = manifest
        self.target_path = target_path
        self.dbt_executable = dbt_executable
        self.cwd = cwd
        self.env = dict(env or {})
        self.in_process = in_process

    def resolve(self, query: SelectionQuery) -> frozenset[str]:
        """The unique_ids dbt selects for ``query``.

        Raises:
            DbtSelectionError: dbt rejected the selection (a bad selector name, a missing state
                manifest...); the message is dbt's.
        """
        args = query.ls_args(self.target_path)
        if self.in_process:
            return self._resolve_in_process(args)
        return self._resolve_with_cli(args)

    def _resolve_in_process(self, args: list[str]) -> frozenset[str]:
        from .invocation.runner_mode import run_in_process

        result, error = run_in_process(args, manifest_json=self.manifest, env=self.env, cwd=self.cwd)
        if error is not None:
            raise DbtSelectionError(f"dbt could not resolve the selection `dbt {shlex.join(args)}`: {error}")
        return _unique_ids(result or ())

    def _resolve_with_cli(self, args: list[str]) -> frozenset[str]:
        command = [self.dbt_executable or "dbt", *args]
        proc = subprocess.run(
            command, cwd=self.cwd, env={**os.environ, **self.env}, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
            raise DbtSelectionError(f"dbt could not resolve the selection `{shlex.join(command)}`: " + "\n".join(tail))
        return _unique_ids(proc.stdout.splitlines())
