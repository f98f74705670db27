"""`coverage-gate` stage: reads a coverage report from the workspace and fails
the stage when line (or branch) coverage is below a threshold.

Reports: Cobertura XML (coverage.py / pytest-cov, gcovr, jacoco-to-cobertura,
Istanbul) and lcov tracefiles (Istanbul/jest, c8, grcov, geninfo). `format =
"auto"` recognises them from the content, not the file name.

`with` keys: `report` ("coverage.xml"), `format` ("auto"), `min-line` (80),
`min-branch` (0: not gated). Outputs: `line-rate`, `lines-covered`,
`lines-valid`, and `branch-rate` when the report measures branches. Rates are
percentages with one decimal ("83.3").

Built with componentize-py against wit/stage.wit (see build-component.sh);
the `wit_world` bindings are generated at build time. Stdlib only.
"""

import json
import math
import os
import traceback
import xml.etree.ElementTree as ET
import xml.parsers.expat as expat
from dataclasses import dataclass
from typing import Any, Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import log
from wit_world.imports.types import (
    Annotation,
    ConfigKey,
    Level,
    PluginInfo,
    ReportStatus,
    StageContext,
    StageError_Config,
    StageError_Internal,
    StageReport,
)

VERSION = "0.1.0"
# Where the host mounts the workspace (only with a `workspace` grant).
WORKSPACE = "/workspace"
# Same bound as test-runner's reports.
MAX_REPORT_BYTES = 64 * 1024 * 1024
FORMATS = ("auto", "cobertura", "lcov")

# name -> (description, default as JSON text); `describe()` is built from
# this table and `with` is checked against it, so the two cannot drift.
KEYS = {
    "report": (
        "Coverage report in the workspace (Cobertura XML or lcov), relative path",
        '"coverage.xml"',
    ),
    "format": (
        'Report format: "auto" (recognised from the content), "cobertura" or "lcov"',
        '"auto"',
    ),
    "min-line": ("Minimum line coverage in percent (0-100)", "80.0"),
    "min-branch": (
        "Minimum branch coverage in percent (0-100); 0 does not gate branches",
        "0",
    ),
}


class ConfigError(Exception):
    """The `with` table is wrong; the message starts with `with.<key>`."""


class ReportError(Exception):
    """The report cannot be read or parsed; the message names the file."""


@dataclass
class Config:
    report: str
    format: str
    min_line: float
    min_branch: float


@dataclass
class Coverage:
    format: str
    # Covered/valid counts when known; a Cobertura report may give only a rate.
    lines_covered: Optional[int]
    lines_valid: Optional[int]
    line_rate: Optional[float]  # percent
    branches_covered: Optional[int]
    branches_valid: Optional[int]
    branch_rate: Optional[float]  # percent; None when branches are not measured


# --- configuration --------------------------------------------------------


def parse_config(text: str) -> Config:
    text = text.strip()
    try:
        raw = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"with: not valid JSON: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"with: expected a table, got {type_name(raw)}")
    for key in raw:
        if key not in KEYS:
            known = ", ".join(f"`{k}`" for k in KEYS)
            raise ConfigError(f"with.{key}: unknown field `{key}`, expected one of {known}")

    report = raw.get("report", "coverage.xml")
    if not isinstance(report, str):
        raise ConfigError(f"with.report: expected a string, got {type_name(report)}")
    fmt = raw.get("format", "auto")
    if fmt not in FORMATS:
        raise ConfigError(
            f"with.format: {json.dumps(fmt)} is not one of {', '.join(FORMATS)}"
        )
    return Config(
        report=workspace_path("report", report),
        format=fmt,
        min_line=percentage(raw, "min-line", 80.0),
        min_branch=percentage(raw, "min-branch", 0.0),
    )


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return "nothing"


def percentage(raw: dict, key: str, default: float) -> float:
    value = raw.get(key, default)
    # bool is an int in Python; `min-line = true` is a mistake, not 1%.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"with.{key}: expected a number, got {type_name(value)}")
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise ConfigError(f"with.{key}: {value} is not a percentage (0 to 100)")
    return float(value)


def workspace_path(key: str, path: str) -> str:
    """A relative workspace path: no absolute path, no `..` (as trivy-gate)."""
    p = path.strip()
    while p.startswith("./"):
        p = p[2:]
    if not p:
        raise ConfigError(f"with.{key}: empty path")
    if p.startswith(("/", "\\")):
        raise ConfigError(f"with.{key}: {json.dumps(path)} must be relative to the workspace")
    if ".." in p.replace("\\", "/").split("/"):
        raise ConfigError(f"with.{key}: {json.dumps(path)}: `..` leaves the workspace")
    return p


# --- reading the report -----------------------------------------------------


def read_report(rel: str) -> str:
    # Without a `workspace` grant nothing is preopened, so /workspace does
    # not exist at all: say so instead of "no such file".
    if not os.path.isdir(WORKSPACE):
        raise ReportError(
            f'{rel}: the workspace is not mounted; the stage needs grants = {{ workspace = "ro" }}'
        )
    path = os.path.join(WORKSPACE, rel)
    try:
        size = os.stat(path).st_size
        if os.path.isdir(path):
            raise ReportError(f"{rel}: is a directory")
        if size > MAX_REPORT_BYTES:
            raise ReportError(
                f"{rel}: {size} bytes, more than the {MAX_REPORT_BYTES // 2**20} MiB a report may have"
            )
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ReportError(f"{rel}: no such file in the workspace") from None
    except OSError as e:
        raise ReportError(f"{rel}: {e.strerror or e}") from None
    text = data.decode("utf-8", errors="replace")
    return text.removeprefix("\ufeff")


def parse_report(name: str, text: str, fmt: str) -> Coverage:
    if fmt == "auto":
        if text.lstrip().startswith("<"):
            fmt = "cobertura"
        elif looks_like_lcov(text):
            fmt = "lcov"
        else:
            raise ReportError(f"{name}: not a coverage report (neither Cobertura XML nor lcov)")
    elif fmt == "lcov" and not looks_like_lcov(text):
        raise ReportError(f'{name}: not an lcov tracefile (no SF/DA/LF/LH line), as format = "lcov" says')
    cov = parse_cobertura(name, text) if fmt == "cobertura" else parse_lcov(name, text)
    if cov.line_rate is None:
        raise ReportError(f"{name}: the report counts no line: there is nothing to gate on")
    return cov


def looks_like_lcov(text: str) -> bool:
    prefixes = ("TN:", "SF:", "DA:", "LF:", "LH:")
    for line in text.splitlines()[:50]:
        line = line.strip()
        if line.startswith(prefixes) or line == "end_of_record":
            return True
    return False


def ratio(covered: Optional[int], valid: Optional[int]) -> Optional[float]:
    if covered is None or not valid:
        return None
    return covered * 100.0 / valid


def parse_xml(name: str, text: str) -> ET.Element:
    """An ElementTree built straight from expat, with entity declarations
    refused (no "billion laughs").

    A DOCTYPE that only names an external DTD (Cobertura and gcovr write
    `<!DOCTYPE coverage SYSTEM "...coverage-04.dtd">`) is harmless: expat
    never fetches it. An internal subset is where entities would be
    declared, so it is refused outright. (ElementTree's own XMLParser is the
    C accelerator, which does not let us hook these events.)
    """
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def doctype(_name, _sysid, _pubid, has_internal_subset):
        if has_internal_subset:
            raise ReportError(
                f"{name}: refused: the DOCTYPE has an internal subset (entity declarations are not allowed)"
            )

    def entity(*_args):
        raise ReportError(f"{name}: refused: the XML declares entities")

    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(text, True)
    except expat.ExpatError as e:
        raise ReportError(
            f"{name}: line {e.lineno}, column {e.offset + 1}: not valid XML: {expat.ErrorString(e.code)}"
        ) from None
    return builder.close()


def parse_cobertura(name: str, text: str) -> Coverage:
    root = parse_xml(name, text)
    if root.tag != "coverage":
        raise ReportError(
            f"{name}: not a Cobertura report: the root element is <{root.tag}>, not <coverage>"
        )

    def count(attr: str) -> Optional[int]:
        value = root.get(attr)
        if value is None:
            return None
        try:
            n = int(value.strip())
        except ValueError:
            raise ReportError(f'{name}: <coverage {attr}="{value}"> is not a count') from None
        if n < 0:
            raise ReportError(f'{name}: <coverage {attr}="{value}"> is not a count')
        return n

    def rate(attr: str) -> Optional[float]:
        value = root.get(attr)
        if value is None:
            return None
        try:
            r = float(value)
        except ValueError:
            raise ReportError(f'{name}: <coverage {attr}="{value}"> is not a number') from None
        if not 0 <= r <= 1:
            raise ReportError(f'{name}: <coverage {attr}="{value}"> is not a rate between 0 and 1')
        return r * 100

    lines = (count("lines-covered"), count("lines-valid"))
    branches = (count("branches-covered"), count("branches-valid"))
    # Without totals on the root (jacoco-to-cobertura, older Cobertura),
    # count the class-level <line> elements.
    if None in lines or None in branches:
        counted = count_lines(name, root)
        if counted is not None:
            if None in lines:
                lines = counted[:2]
            if None in branches:
                branches = counted[2:]

    line_rate = ratio(*lines)
    if line_rate is None and lines[1] is None:
        line_rate = rate("line-rate")
    branch_rate = ratio(*branches)
    if branch_rate is None and branches[1] is None and root.get("branches-valid") is None:
        # Only a rate, no counts. coverage.py writes branch-rate="0" with
        # branches-valid="0" when branches are not measured; that case has
        # counts and is handled above.
        branch_rate = rate("branch-rate")
    for covered, valid, what in ((*lines, "lines"), (*branches, "branches")):
        if covered is not None and valid is not None and covered > valid:
            raise ReportError(
                f"{name}: {covered} {what} covered out of {valid}: the report is inconsistent"
            )
    return Coverage("cobertura", *lines, line_rate, *branches, branch_rate)


def count_lines(name: str, root: ET.Element):
    """(lines covered, lines valid, branches covered, branches valid) from
    `<class><lines><line>`; `<method>` elements repeat the same lines, so
    they are not counted. None when the report lists no line."""
    lc = lv = bc = bv = 0
    found = False
    for cls in root.iter("class"):
        for line in cls.findall("./lines/line"):
            found = True
            try:
                hits = float(line.get("hits", "0"))
            except ValueError:
                raise ReportError(
                    f'{name}: <line number="{line.get("number")}"> has hits="{line.get("hits")}", not a count'
                ) from None
            lv += 1
            lc += hits > 0
            cond = line.get("condition-coverage")  # e.g. "50% (1/2)"
            if line.get("branch") == "true" and cond and "(" in cond:
                try:
                    c, v = cond.split("(", 1)[1].rstrip(") ").split("/")
                    bc += int(c)
                    bv += int(v)
                except ValueError:
                    raise ReportError(
                        f'{name}: <line number="{line.get("number")}"> has condition-coverage="{cond}"'
                    ) from None
    return (lc, lv, bc, bv) if found else None


def parse_lcov(name: str, text: str) -> Coverage:
    """Sums of LH/LF and BRH/BRF over the records, from DA/BRDA lines when a
    record has no totals (same rules as test-runner)."""
    lh = lf = brh = brf = 0

    class Record:
        def __init__(self):
            self.lf = self.lh = self.brf = self.brh = None
            self.da_found = self.da_hit = self.brda_found = self.brda_hit = 0
            self.open = False

    def close(r: Record):
        nonlocal lh, lf, brh, brf
        lh += r.da_hit if r.lh is None else r.lh
        lf += r.da_found if r.lf is None else r.lf
        brh += r.brda_hit if r.brh is None else r.brh
        brf += r.brda_found if r.brf is None else r.brf

    rec = Record()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()

        def bad(what: str) -> ReportError:
            return ReportError(f"{name}: line {number}: {what}: {json.dumps(line)}")

        def counted(value: str) -> int:
            try:
                n = int(value.strip())
            except ValueError:
                raise bad("not a count") from None
            if n < 0:
                raise bad("not a count")
            return n

        if line == "end_of_record":
            close(rec)
            rec = Record()
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        if key == "SF":
            rec.open = True
        elif key in ("LF", "LH", "BRF", "BRH"):
            setattr(rec, key.lower(), counted(value))
        elif key == "DA":  # DA:<line>,<hits>[,<checksum>]
            parts = value.split(",")
            if len(parts) < 2:
                raise bad("DA needs <line>,<hits>")
            try:
                hits = float(parts[1])  # some tools write floats or negatives
            except ValueError:
                raise bad("not a hit count") from None
            rec.open = True
            rec.da_found += 1
            rec.da_hit += hits > 0
        elif key == "BRDA":  # BRDA:<line>,<block>,<branch>,<taken or ->
            parts = value.split(",")
            if len(parts) != 4:
                raise bad("BRDA needs <line>,<block>,<branch>,<taken>")
            rec.open = True
            rec.brda_found += 1
            rec.brda_hit += parts[3].strip() not in ("-", "0")
    if rec.open or rec.lf is not None:
        close(rec)  # last record without end_of_record
    for covered, valid, what in ((lh, lf, "lines hit (LH)"), (brh, brf, "branches hit (BRH)")):
        if covered > valid:
            raise ReportError(f"{name}: {covered} {what} out of {valid}: the report is inconsistent")
    return Coverage("lcov", lh, lf, ratio(lh, lf), brh, brf, ratio(brh, brf))


# --- the gate ---------------------------------------------------------------


def pct(value: float) -> str:
    return f"{value:.1f}"


def pct_below(value: float, threshold: float) -> str:
    """The figure for "X% is below T%": rounding must not show 80.0 for 79.96."""
    text = pct(value)
    return text if float(text) < threshold else f"{math.floor(value * 10) / 10:.1f}"


def threshold(value: float) -> str:
    return f"{value:g}%"


def report(status: ReportStatus, summary: str) -> StageReport:
    return StageReport(status=status, summary=summary, outputs=[], annotations=[])


def annotation(level: Level, title: str, message: str, file: Optional[str] = None) -> Annotation:
    return Annotation(level=level, title=title, message=message, file=file, line=None)


def gate(cfg: Config, cov: Coverage) -> StageReport:
    reasons = []
    if cov.line_rate + 1e-9 < cfg.min_line:
        reasons.append(
            f"line coverage {pct_below(cov.line_rate, cfg.min_line)}% is below the {threshold(cfg.min_line)} threshold"
        )
    if cfg.min_branch > 0:
        if cov.branch_rate is None:
            reasons.append(
                f"min-branch is {threshold(cfg.min_branch)} but the report has no branch coverage"
            )
        elif cov.branch_rate + 1e-9 < cfg.min_branch:
            reasons.append(
                f"branch coverage {pct_below(cov.branch_rate, cfg.min_branch)}% is below the {threshold(cfg.min_branch)} threshold"
            )

    if reasons:
        summary = "; ".join(reasons)
    else:
        summary = f"line coverage {pct(cov.line_rate)}%"
        if cov.lines_valid is not None:
            summary += f" ({cov.lines_covered}/{cov.lines_valid} lines)"
        summary += f" meets the {threshold(cfg.min_line)} threshold"
        if cov.branch_rate is not None:
            summary += f"; branch coverage {pct(cov.branch_rate)}%"
    out = report(ReportStatus.FAILED if reasons else ReportStatus.PASSED, summary)
    out.outputs.append(("line-rate", pct(cov.line_rate)))
    if cov.branch_rate is not None:
        out.outputs.append(("branch-rate", pct(cov.branch_rate)))
    if cov.lines_valid is not None:
        out.outputs.append(("lines-covered", str(cov.lines_covered)))
        out.outputs.append(("lines-valid", str(cov.lines_valid)))
    for reason in reasons:
        out.annotations.append(annotation(Level.ERROR, "coverage below threshold", reason, cfg.report))
    return out


def execute(ctx: StageContext) -> StageReport:
    cfg = parse_config(ctx.config)
    try:
        cov = parse_report(cfg.report, read_report(cfg.report), cfg.format)
    except ReportError as e:
        log.write(Level.ERROR, str(e))
        out = report(ReportStatus.FAILED, f"cannot use the coverage report: {e}")
        out.annotations.append(annotation(Level.ERROR, "invalid coverage report", str(e), cfg.report))
        return out
    figures = f"{cfg.report}: {cov.format}, line coverage {pct(cov.line_rate)}%"
    if cov.lines_valid is not None:
        figures += f" ({cov.lines_covered}/{cov.lines_valid})"
    if cov.branch_rate is not None:
        figures += f", branch coverage {pct(cov.branch_rate)}% ({cov.branches_covered}/{cov.branches_valid})"
    log.write(Level.INFO, figures)
    return gate(cfg, cov)


class WitWorld(wit_world.WitWorld):
    def describe(self) -> PluginInfo:
        return PluginInfo(
            name="coverage-gate",
            version=VERSION,
            description="Fails the stage when line or branch coverage in a Cobertura or lcov report is below a threshold",
            config=[
                ConfigKey(name=k, description=d, required=False, default_value=v)
                for k, (d, v) in KEYS.items()
            ],
            capabilities=["workspace"],
        )

    def run(self, ctx: StageContext) -> StageReport:
        try:
            return execute(ctx)
        except ConfigError as e:
            raise Err(StageError_Config(str(e)))
        except Err:
            raise
        except Exception:
            # A bug here must still end as a stage error, not a trap.
            raise Err(StageError_Internal(traceback.format_exc(limit=5)))
