"""Command line: ``python -m vpred_core {demo,inspect,write-yaml,stamp}``.

Exit codes of the file commands: 0 = done (inspected / written or would be written), 1 = at least one error,
3 = nothing to do (no checkpoint found, every YAML already exists / was skipped, every file already stamped as
asked). 2 is argparse's usage error.

Modules that import torch (inspection, YAML, demo) are imported by the commands that use them, so that ``stamp``
runs in a few tens of MB.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoints.host_keys import sidecar_yaml_path
from ..checkpoints.stamp import MODE_IN_PLACE, MODE_NEW_FILE, StampError, StampRequest, StampResult, stamp_file

if TYPE_CHECKING:
    from ..checkpoints.inspection import InspectionResult


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="python -m vpred_core", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register_demo(subparsers)
    register_files(subparsers)
    register_stamp(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; return its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    return int(args.handler(args) or 0)


EXIT_OK, EXIT_ERRORS, EXIT_NOTHING_TO_DO = 0, 1, 3
TABLE_COLUMNS = ("file", "arch", "pred", "ztsnr", "betas", "prediction from", "notes")


def register_files(subparsers) -> None:
    """Add the ``inspect`` and ``write-yaml`` sub-commands."""
    inspect = subparsers.add_parser("inspect", help="show each checkpoint's inference settings (header only)")
    _common(inspect)
    inspect.add_argument("--json", action="store_true", help="one JSON document (a list) on stdout")
    inspect.set_defaults(handler=run_inspect)
    write = subparsers.add_parser("write-yaml", help="write <checkpoint>.yaml beside checkpoints for the webuis")
    _common(write)
    write.add_argument("--dry-run", action="store_true", help="report what would be written, write nothing")
    write.add_argument("--force", action="store_true", help="replace existing YAML files (a .bak copy is kept)")
    write.add_argument("--only-vpred", action="store_true", help="only checkpoints detected as v-prediction")
    write.add_argument("--json", action="store_true", help="outcomes as JSON on stdout")
    write.set_defaults(handler=run_write_yaml)


def _common(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint files or folders")
    parser.add_argument("-r", "--recursive", action="store_true", help="scan folders recursively")
    parser.add_argument("--override", metavar="FILE", help="YAML/JSON file of settings that win over detection")
    parser.add_argument("--progress", dest="progress", action="store_true", default=None,
                        help="progress bar on stderr even when it is not a terminal")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")


def collect(paths: list[str], recursive: bool) -> tuple[list[str], list[str], bool]:
    """(checkpoint files, error messages, whether any folder was scanned)."""
    from ..checkpoints.inspection import CHECKPOINT_SUFFIXES

    files, errors, scanned = [], [], False
    for path in paths:
        if os.path.isdir(path):
            scanned = True
            try:
                files.extend(find_checkpoints(path, CHECKPOINT_SUFFIXES, recursive))
            except OSError as exc:
                errors.append(f"{path}: cannot list folder: {exc.strerror or exc}")
        elif os.path.isfile(path):
            files.append(path)
        else:
            errors.append(f"{path}: no such file or folder")
    return files, errors, scanned


def _prepare(args) -> tuple[list[str], list[str], bool] | int:
    from ..checkpoints.inspection import load_override

    if args.override is not None:
        try:
            load_override(args.override)
        except ValueError as exc:
            print(f"error: override file: {exc}")
            return EXIT_ERRORS
    return collect(args.paths, args.recursive)


def _map_files(args, action) -> tuple[list, list[str]] | int:
    """Run ``action(path)`` over every collected file with a progress bar; (results, errors) or an exit code."""
    prepared = _prepare(args)
    if isinstance(prepared, int):
        return prepared
    files, errors, scanned = prepared
    results = []
    with ProgressBar(len(files), scanned and progress_wanted(args.progress)) as bar:
        for path in files:
            results.append(action(path))
            bar.step(os.path.basename(path))
    return results, errors


def run_inspect(args) -> int:
    from ..checkpoints.inspection import STATUS_ERROR, inspect_checkpoint

    mapped = _map_files(args, lambda path: inspect_checkpoint(path, args.override))
    if isinstance(mapped, int):
        return mapped
    results, errors = mapped
    if args.json:
        print(json.dumps({"results": [r.to_dict() for r in results], "errors": errors}, indent=1))
    else:
        _print_table(results)
        for message in errors:
            print(f"error: {message}")
    failed = errors or any(r.status == STATUS_ERROR for r in results)
    return EXIT_ERRORS if failed else (EXIT_OK if results else EXIT_NOTHING_TO_DO)


def _row(result: InspectionResult) -> tuple[str, ...]:
    name = os.path.basename(result.path)
    if not result.ok:
        return (name, "-", "-", "-", "-", result.status, result.error or "")
    betas = f"{result.beta_schedule} {result.linear_start:g}-{result.linear_end:g}"
    source = result.sources.get("prediction")
    notes = "; ".join(result.warnings)
    return (name, result.architecture.id, result.prediction, "yes" if result.ztsnr else "no", betas,
            source.source if source else "-", notes)


def _print_table(results: list[InspectionResult]) -> None:
    rows = [TABLE_COLUMNS, *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1])


def run_write_yaml(args) -> int:
    from ..checkpoints.sidecar_yaml import WOULD_WRITE, WRITTEN, write_yaml_for_checkpoint

    mapped = _map_files(args, lambda path: write_yaml_for_checkpoint(
        path, force=args.force, dry_run=args.dry_run, only_vpred=args.only_vpred, override_path=args.override))
    if isinstance(mapped, int):
        return mapped
    outcomes, errors = mapped
    if args.json:
        print(json.dumps({"outcomes": [o.to_dict() for o in outcomes], "errors": errors}, indent=1))
    else:
        for outcome in outcomes:
            detail = f" - {outcome.reason}" if outcome.reason else ""
            print(f"{outcome.status:<12} {outcome.yaml_path}{detail}")
        for message in errors:
            print(f"error: {message}")
    if errors or any(o.is_error for o in outcomes):
        return EXIT_ERRORS
    return EXIT_OK if any(o.status in (WRITTEN, WOULD_WRITE) for o in outcomes) else EXIT_NOTHING_TO_DO


ZTSNR_CHOICES = {"on": True, "off": False}
HASH_NOTE = ("note: a stamped file has a new whole-file sha256, so Civitai's AutoV2 hash and the webui's model hashes "
             "no longer match the published ones; the tensor data hash (sha256 after the header) is unchanged")


def register_stamp(subparsers) -> None:
    """Add the ``stamp`` sub-command."""
    stamp = subparsers.add_parser(
        "stamp", help="write the v_pred / ztsnr markers and metadata every host reads into .safetensors files")
    stamp.add_argument("paths", nargs="+", metavar="PATH", help=".safetensors checkpoint files")
    stamp.add_argument("--prediction", required=True, choices=("v", "eps"), help="what the model predicts")
    stamp.add_argument("--ztsnr", required=True, choices=tuple(ZTSNR_CHOICES), help="trained with zero terminal SNR")
    stamp.add_argument("--beta-end", type=float, metavar="X",
                       help="record a non-default beta_end (linear_end) for this toolkit and write-yaml")
    stamp.add_argument("--dry-run", action="store_true", help="print the header diff, write nothing")
    stamp.add_argument("--backup", action="store_true", help="keep the original as <file>.bak (forces a rewrite)")
    stamp.add_argument("--out", metavar="FILE", help="write a new file (never overwritten) instead of replacing")
    stamp.set_defaults(handler=run_stamp, usage_error=stamp.error)


def run_stamp(args) -> int:
    request = _stamp_request(args)
    outcomes = [_stamp_one(path, request, args) for path in args.paths]
    if any(isinstance(o, StampResult) and o.changed and not o.dry_run for o in outcomes):
        print(HASH_NOTE)
    if any(isinstance(o, str) for o in outcomes):
        return EXIT_ERRORS
    return EXIT_OK if any(o.changed for o in outcomes) else EXIT_NOTHING_TO_DO


def _stamp_request(args) -> StampRequest:
    if args.out is not None and len(args.paths) != 1:
        args.usage_error("--out takes exactly one PATH")
    if args.out is not None and args.backup:
        args.usage_error("--backup does nothing with --out (the original is not modified)")
    try:
        return StampRequest(args.prediction, ZTSNR_CHOICES[args.ztsnr], args.beta_end)
    except ValueError as exc:
        args.usage_error(str(exc))


def _stamp_one(path: str, request: StampRequest, args) -> StampResult | str:
    """Stamp one file and print what happened; the error message (already printed) when it failed."""
    try:
        result = stamp_file(path, request, out=args.out, backup=args.backup, dry_run=args.dry_run)
    except StampError as exc:
        print(f"error: {exc}")
        return str(exc)
    _print_stamp(result)
    warning = _sidecar_warning(path, request)
    if warning:
        print(f"  warning: {warning}")
    return result


def _print_stamp(result: StampResult) -> None:
    status = "unchanged" if not result.changed else "would stamp" if result.dry_run else "stamped"
    print(f"{status:<12} {result.path} ({_how(result)})")
    if result.recovered:
        print(f"  {result.recovered}")
    for change in result.changes:
        print(f"  {change}")
    if result.old_data_sha256:
        how = "data region not written" if result.mode == MODE_IN_PLACE else "copy read back, equal byte for byte"
        print(f"  tensor data sha256 before: {result.old_data_sha256}")
        print(f"  tensor data sha256 after:  {result.new_data_sha256} ({how})")
    if result.backup_path:
        print(f"  backup: {result.backup_path}")
    for warning in result.warnings:
        print(f"  warning: {warning}")


def _how(result: StampResult) -> str:
    if not result.changed:
        return "already states what was asked"
    if result.mode == MODE_IN_PLACE:
        return f"in place: only the {result.old_header_size}-byte header is rewritten"
    where = f"new file {result.written_path}" if result.mode == MODE_NEW_FILE else "file rewritten"
    return f"{where}: header {result.old_header_size} -> {result.new_header_size} bytes, tensor data copied"


def _sidecar_warning(path: str, request: StampRequest) -> str | None:
    """The webuis read ``<checkpoint>.yaml`` before the markers: say so when it states another prediction."""
    yaml_path = sidecar_yaml_path(path)
    if not os.path.isfile(yaml_path):
        return None
    from ..checkpoints.inspection import claims_from_yaml

    claims, _ = claims_from_yaml(yaml_path)
    stated = {claim.value for claim in claims if claim.field == "prediction"}
    if stated and stated != {request.prediction}:
        return (f"{yaml_path} states prediction {', '.join(sorted(stated))} and the webuis use it: run "
                f"'python -m vpred_core write-yaml --force {path}'")
    return None


logger = logging.getLogger(__name__)
DEFAULT_OUTPUT = "vpred_demo.png"


def register_demo(subparsers) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser("demo", help="sample the oracle model: flawed vs v-pred + ZTSNR + trailing")
    parser.add_argument("--samples", type=int, default=16, help="samples per case (even; antithetic pairs)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", default="euler", help="k-diffusion sampler name without 'sample_'")
    parser.add_argument("--out", default=DEFAULT_OUTPUT, help="PNG path for the labelled sample grid")
    parser.set_defaults(handler=run_demo_command)


def run_demo_command(args) -> int:
    """Run the demo, print the table, write the PNG."""
    from .demo import format_table, render_grid, run_demo

    results = run_demo(args.samples, args.steps, args.seed, args.sampler)
    print(format_table(results))
    render_grid(results, Path(args.out))
    print(f"wrote {Path(args.out).resolve()}")
    return 0


BAR_WIDTH = 30
MIN_REDRAW_SECONDS = 0.1


class ProgressBar:
    """``with ProgressBar(total, enabled) as bar: bar.step()``; draws ``[####----] 12/40 name`` on stderr."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled, self.done = max(total, 0), enabled and total > 0, 0
        self.stream = stream if stream is not None else sys.stderr
        self._last_draw = 0.0

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._draw("", force=True)
            self.stream.write("\n")
            self.stream.flush()

    def step(self, label: str = "") -> None:
        self.done += 1
        if self.enabled:
            self._draw(label, force=self.done == self.total)

    def _draw(self, label: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < MIN_REDRAW_SECONDS:
            return
        self._last_draw = now
        filled = BAR_WIDTH * self.done // self.total
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label[-40:]:<40}")
        self.stream.flush()


def progress_wanted(requested: bool | None, stream=None) -> bool:
    """Explicit request wins; otherwise only when the stream is a terminal."""
    if requested is not None:
        return requested
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def find_checkpoints(folder: str, suffixes: tuple[str, ...], recursive: bool) -> Iterator[str]:
    """Checkpoint files in ``folder`` (sorted; sub-folders too when ``recursive``), by case-insensitive suffix."""
    if not recursive:
        yield from _matching(folder, sorted(os.listdir(folder)), suffixes)
        return
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        yield from _matching(root, sorted(files), suffixes)


def _matching(root: str, names: Iterable[str], suffixes: tuple[str, ...]) -> Iterator[str]:
    for name in names:
        full = os.path.join(root, name)
        if name.lower().endswith(suffixes) and os.path.isfile(full):
            yield full
