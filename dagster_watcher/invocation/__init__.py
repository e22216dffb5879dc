"""Invocation modes: how one `dbt` command is started and how its raw events reach the ordered writer.

- :class:`RunnerInvocation`: dbt in-process through ``dbtRunner``, fed the definition-time manifest;
- :class:`SubprocessInvocation`: a `dbt` child process whose JSON log is read line by line.
"""

from .base import DbtInvocation, InvocationExit
from .runner_mode import RunnerInvocation, parse_in_process
from .subprocess_mode import SubprocessInvocation

__all__ = ["DbtInvocation", "InvocationExit", "RunnerInvocation", "SubprocessInvocation", "parse_in_process"]
