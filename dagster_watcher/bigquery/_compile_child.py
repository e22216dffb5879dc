"""The program :func:`~dagster_watcher.bigquery.compile_project` runs in its dbt subprocess.

``python -m dagster_watcher.bigquery._compile_child ARGS_JSON HOOKS_PATH FAIL_FAST``: ``dbt compile``
through dbtRunner, plus two things the CLI does not do. (1) Every node's pre-/post-hooks are rendered
with the same context dbt gives the materialization at run time (where ``run_hooks()`` renders them),
and written to ``HOOKS_PATH``: the manifest only stores them as Jinja. (2) With ``FAIL_FAST`` ``0``,
compile errors do not stop the compile (dbt compile stops at the first error; dbt build does not):
each failing node is reported in run_results.json and the others are still compiled.

Exit code: 0 success, 1 some node failed, 2 dbt itself failed (profile, project, connection).
It patches dbt's ``Compiler.compile_node`` and ``CompileTask.raise_on_first_error``; it runs only in
this child process, never in the caller's.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main(argv: list[str]) -> int:
    args, hooks_path, fail_fast = json.loads(argv[0]), argv[1], argv[2] == "1"
    from dbt.cli.main import dbtRunner
    from dbt.clients import jinja
    from dbt.compilation import Compiler
    from dbt.task.compile import CompileTask

    rendered: dict[str, Any] = {}
    original = Compiler.compile_node

    def compile_node(self: Compiler, node: Any, manifest: Any, *args: Any, **kwargs: Any) -> Any:
        node = original(self, node, manifest, *args, **kwargs)
        config = getattr(node, "config", None)
        hooks = {
            "pre": list(getattr(config, "pre_hook", None) or []),
            "post": list(getattr(config, "post_hook", None) or []),
        }
        if hooks["pre"] or hooks["post"]:
            extra = args[0] if args else kwargs.get("extra_context")
            context = self._create_node_context(node, manifest, dict(extra or {}))
            rendered[node.unique_id] = {
                which: [
                    {
                        "sql": jinja.get_rendered(h.sql, context, node),
                        "transaction": bool(h.transaction),
                        "index": h.index,
                    }
                    for h in items
                ]
                for which, items in hooks.items()
            }
        return node

    Compiler.compile_node = compile_node  # type: ignore[method-assign]
    if not fail_fast:
        CompileTask.raise_on_first_error = lambda self: False  # type: ignore[method-assign]
    result = dbtRunner().invoke(args)
    with open(hooks_path, "w") as handle:
        json.dump(rendered, handle)
    if result.exception is not None:
        print(f"dbt compile raised {type(result.exception).__name__}: {result.exception}", file=sys.stderr)
        return 2
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
