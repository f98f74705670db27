"""`{{name}}` stage plugin (Python, built with componentize-py).

`describe()` declares the `with` keys the host validates a pipeline against;
`run()` gets the stage context and returns a report. Raise
`Err(StageError_Config(...))` for a wrong `with` table.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log
from wit_world.imports.types import (
    ConfigKey,
    Level,
    PluginInfo,
    ReportStatus,
    StageContext,
    StageError_Config,
    StageReport,
)


class WitWorld(wit_world.WitWorld):
    def describe(self) -> PluginInfo:
        return PluginInfo(
            name="{{name}}",
            version="0.1.0",
            description="Says hello",
            config=[ConfigKey(name="who", description="Whom to greet", required=False, default_value='"world"')],
            capabilities=[],
        )

    def run(self, ctx: StageContext) -> StageReport:
        config = json.loads(ctx.config or "{}") or {}
        unknown = sorted(set(config) - {"who"})
        if unknown:
            raise Err(StageError_Config(f"with.{unknown[0]}: unknown field `{unknown[0]}`, expected `who`"))
        who = config.get("who", "world")
        if not isinstance(who, str):
            raise Err(StageError_Config("with.who: expected a string"))
        log.write(Level.INFO, f"greeting {who} from stage {ctx.stage}")
        return StageReport(
            status=ReportStatus.PASSED,
            summary=f"hello, {who}",
            outputs=[("greeting", who)],
            annotations=[],
        )
