"""The command line around Hydra: `--help` pages built from the config files' own comments, and
a config that does not compose (an unknown key, a missing option) reported with exit status 2 and,
for an unknown key, the closest valid one.

Imports neither torch nor Lightning: `--help` and `--cfg job` stay fast.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dcgan_lightning.errors import USER_ERROR_STATUS

# The docs page for each config group (`--help` points to it).
DOCS = {
    "data": "docs/datasets.md",
    "experiment": "docs/datasets.md",
    "model": "docs/configuration.md",
    "trainer": "docs/multi-gpu-and-precision.md",
    "metrics": "docs/metrics.md",
    "logger": "docs/sweeps-and-wandb.md",
    "hparams_search": "docs/sweeps-and-wandb.md",
    "callbacks": "docs/configuration.md",
    "paths": "docs/configuration.md",
}
APPENDED_GROUPS = ("experiment",)  # not in the defaults list: chosen with `+experiment=NAME`
_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")


# -- reading the config files ------------------------------------------------------------------
def _sources(root: DictConfig) -> list[tuple[str, str]]:
    """(schema, path) of the config sources Hydra searched, the app's own first."""
    sources = root.hydra.runtime.get("config_sources") or []
    return [
        (s.schema, s.path)
        for s in sources
        if s.schema in ("file", "pkg") and s.provider not in ("hydra", "schema")
    ]


def _locate(root: DictConfig, relative: str) -> Any | None:
    """The first config source's file (or folder) at `relative` (a Path or a Traversable)."""
    for schema, path in _sources(root):
        try:
            base = Path(path) if schema == "file" else resources.files(path.replace("/", "."))
        except (ModuleNotFoundError, TypeError):
            continue
        candidate = base.joinpath(relative)
        if candidate.is_file() or candidate.is_dir():
            return candidate
    return None


def _read(root: DictConfig, relative: str) -> str | None:
    found = _locate(root, relative)
    return found.read_text() if found is not None and found.is_file() else None


def _package(text: str, group: str) -> str:
    """Where a group file's keys land: `# @package X` or the group's path."""
    match = re.search(r"^#\s*@package\s+(\S+)", text, re.MULTILINE)
    package = match.group(1) if match else group.replace("/", ".")
    return "" if package == "_global_" else package


def _comments(text: str, package: str) -> Iterator[tuple[str, list[str], str]]:
    """(full key, comment lines above it, comment after it) for each commented key of a file."""
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    in_defaults = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if not stripped.startswith("# @package"):
                above.append(stripped)
            continue
        match = _KEY_LINE.match(line)
        if not match:
            if not stripped:
                above = []
            continue
        indent = len(match["indent"])
        if indent == 0:
            in_defaults = match["key"] == "defaults"
        if in_defaults:
            above = []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        key = ".".join([package] * bool(package) + [k for _, k in stack])
        after = "# " + match["rest"].partition(" #")[2].strip() if " #" in match["rest"] else ""
        if above or after:
            yield key, above, after
        above = []


def _inherited(text: str) -> list[str]:
    """Same-group files a group file's defaults list names (conf/trainer/gpu.yaml: `default`)."""
    block = re.search(r"^defaults:\n((?:[ \t]+-.*\n?)+)", text, re.MULTILINE)
    if not block:
        return []
    names = re.findall(r"^[ \t]+-[ \t]+([\w./-]+)[ \t]*(?:#.*)?$", block.group(1), re.MULTILINE)
    return [n for n in names if n != "_self_"]


def key_comments(root: DictConfig) -> dict[str, tuple[list[str], str]]:
    """The YAML comments of every key in the files composed into `root` (the primary config, each
    chosen group option and the files it inherits), later files winning: the per-key docs."""
    config_name = root.hydra.job.config_name
    files = [(f"{config_name}.yaml", "")]
    choices = root.hydra.runtime.choices
    appended = [g for g in APPENDED_GROUPS if choices.get(g)]
    for group in [g for g in choices if g not in appended] + appended:
        option = choices[group]
        if group.startswith("hydra") or option is None:
            continue
        text = _read(root, f"{group}/{option}.yaml") or ""
        files += [(f"{group}/{name}.yaml", group) for name in _inherited(text)]
        files.append((f"{group}/{option}.yaml", group))
    comments: dict[str, tuple[list[str], str]] = {}
    for relative, group in files:
        text = _read(root, relative)
        if text is not None:
            package = _package(text, group) if group else ""
            for key, above, after in _comments(text, package):
                comments[key] = (above, after)
    return comments


# -- the help pages ----------------------------------------------------------------------------
def _groups(root: DictConfig) -> str:
    choices = root.hydra.runtime.choices
    groups: dict[str, list[str]] = {}
    for schema, path in _sources(root):
        base = Path(path) if schema == "file" else resources.files(path.replace("/", "."))
        for folder in base.iterdir() if base.is_dir() else []:
            if folder.is_dir() and folder.name not in ("hydra", "__pycache__"):
                names = [f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml")]
                groups.setdefault(folder.name, [])
                groups[folder.name] += [n for n in sorted(names) if n not in groups[folder.name]]
    lines = []
    for group, options in sorted(groups.items(), key=lambda g: (g[0] in APPENDED_GROUPS, g[0])):
        chosen = choices.get(group)
        marked = ", ".join(f"{o}*" if o == chosen else o for o in options)
        syntax = f"+{group}=NAME" if group in APPENDED_GROUPS else f"{group}=OPTION"
        docs = f"  ({DOCS[group]})" if group in DOCS else ""
        lines.append(f"  {syntax}{docs}")
        lines += textwrap.wrap(marked, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def _annotated_config(root: DictConfig) -> str:
    """The composed config (interpolations unresolved), each key with its YAML comments."""
    cfg = OmegaConf.masked_copy(root, [k for k in root if k != "hydra"])
    comments = key_comments(root)
    out: list[str] = []
    stack: list[tuple[int, str]] = []
    for line in OmegaConf.to_yaml(cfg).splitlines():
        match = _KEY_LINE.match(line)
        if not match:
            out.append(line)
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        above, after = comments.get(".".join(k for _, k in stack), ([], ""))
        out += [match["indent"] + c for c in above]
        out.append(f"{line}  {after}" if after else line)
    return "\n".join("  " + line for line in out)


def help_section(section: str, *, _root_: DictConfig) -> str:
    """`${dcgan_help:groups}` / `${dcgan_help:keys}` in a `hydra.help.template`: the config groups
    and their options, or the composed config with its comments. `$` is doubled: Hydra passes the
    template through `string.Template`."""
    if section == "groups":
        text = _groups(_root_)
    elif section == "keys":
        text = _annotated_config(_root_)
    else:
        raise ValueError(f"dcgan_help takes groups or keys, got {section!r}")
    return text.replace("$", "$$")


# -- a config that does not compose ------------------------------------------------------------
_TASK_STARTED = False
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name",
                     "-cn", "--config-dir", "-cd", "--experimental-rerun", "--info"}  # fmt: skip


def mark_task_started() -> None:
    """Called first thing by a task function: a later exit 1 is the task's, not the config's."""
    global _TASK_STARTED
    _TASK_STARTED = True


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """A task function's body for an entry point: a user's mistake (`UserError`) is one message
    and exit 2; anything else is a bug and keeps its traceback."""
    from dcgan_lightning.errors import exit_with_message, user_error

    mark_task_started()
    try:
        return task(cfg)
    except Exception as err:
        mistake = user_error(err)
        if mistake is None:
            raise
        exit_with_message(mistake)


def _overrides(argv: list[str]) -> list[str]:
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE and arg != "--info"
        else:
            overrides.append(arg)
    return overrides


def _flat_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            yield path
            yield from _flat_keys(value, f"{path}.")


def _config_dir_flag(argv: list[str]) -> str | None:
    for flag, value in itertools.pairwise(argv):
        if flag in ("--config-dir", "-cd"):
            return value
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config-dir=")), None)


def closest_key_hint(config_dir: Path, config_name: str, argv: list[str]) -> str | None:
    """'Did you mean model.z_dim?' for each `key=value` override naming no key of the config the
    other overrides compose (difflib over its keys); None when there is nothing to add."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    extra = _config_dir_flag(argv)  # a user's own config folder (--config-dir)
    searchpath = [f"hydra.searchpath=[file://{Path(extra).absolute()}]"] if extra else []
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return _hint_for(lambda overrides: compose(config_name, [*overrides, *searchpath]), argv)


def _hint_for(compose: Callable[[list[str]], DictConfig], argv: list[str]) -> str | None:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    try:
        parsed = OverridesParser.create().parse_overrides(_overrides(argv))
        groups = set(GlobalHydra.instance().config_loader().list_groups(""))
        suspects = [
            o for o in parsed
            if o.type == OverrideType.CHANGE and not o.key_or_group.startswith("hydra")
            and "/" not in o.key_or_group and o.key_or_group not in groups
        ]  # fmt: skip
        cfg = compose([o.input_line for o in parsed if o not in suspects])
    except Exception:  # the other overrides fail too: Hydra's message says why
        return None
    container = OmegaConf.to_container(cfg, resolve=False)
    keys = list(_flat_keys(container))
    hints = []
    for override in suspects:
        key = override.key_or_group
        if OmegaConf.select(cfg, key, default=_Missing, throw_on_missing=False) is not _Missing:
            continue
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.8)  # typos, not other keys
        if close:
            hints.append(f"{key}: did you mean {close[0]}?")
    if not hints:
        return None
    return "\n".join(hints) + "\n(`--cfg job` prints every key; `--help` documents them)"


class _Missing:
    """Sentinel for OmegaConf.select."""


def run_cli(hydra_main: Callable[[], Any], config_name: str, config_path: str) -> None:
    """Run a `@hydra.main` function (its `config_path` and `config_name`); a config that does not
    compose (Hydra printed why and exits 1) exits 2 instead, with the closest valid key for an
    unknown one. A task's own failure keeps Hydra's exit status 1; HYDRA_FULL_ERROR=1 keeps
    Hydra's traceback."""
    global _TASK_STARTED
    _TASK_STARTED = False
    try:
        hydra_main()
    except BrokenPipeError:  # `--help | head` closed the pipe: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except SystemExit as stop:
        if stop.code != 1 or _TASK_STARTED or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        module_dir = Path(sys.modules[hydra_main.__module__].__file__ or ".").parent
        try:
            hint = closest_key_hint(module_dir / config_path, config_name, sys.argv[1:])
        except Exception:  # a hint is a courtesy: never hide Hydra's message behind another
            hint = None
        if hint:
            print(hint, file=sys.stderr)
        sys.exit(USER_ERROR_STATUS)
