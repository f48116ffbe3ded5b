"""The docs are tested like code: README.md and every docs/**/*.md page is read, and what it tells a
user to type must work today. Links resolve; every `python -m dcgan_lightning...` and `make ...`
line composes with the real conf/ (as `--cfg job` would: nothing trains); every `key=value` in
backticks names a key some config has; option tables list exactly the files of their conf/ group.

Data-driven: a new page is checked as soon as it exists. Composing costs ~0.1 s, so configs are
cached and a command is composed once however often the docs repeat it."""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

import dcgan_lightning  # noqa: F401  (registers the config resolvers)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

# Hydra command-line flags that take a value; their pair is dropped before composing.
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i"}
HYDRA_FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--resolve"}
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
SHELL_STOPS = {"&&", "||", ";", "|", ">", ">>", "2>&1", "&"}
# Groups whose option lists the docs must state somewhere, checked against conf/<group>/*.yaml.
LISTED_GROUPS = ("model", "experiment", "data", "logger", "trainer")
OVERRIDE = re.compile(r"^(\+{1,2}|~)?[A-Za-z_][\w./@-]*(=.*)?$")
ENV_VAR = re.compile(r"^[A-Z][A-Z0-9_]*$")  # `HYDRA_FULL_ERROR=1` sets the shell, not the config
GENERIC_OVERRIDES = {"key=value", "group=option", "GROUP=OPTION", "KEY=VALUE"}
PYTHON_LITERALS = {"True", "False", "None"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_/]*$")  # +experiment=NAME, data.root=PATH


@dataclass(frozen=True)
class Snippet:
    """A piece of a page (a code line or a backticked span) and where it is. A transcript line
    (`$ command` followed by its output in one block) may show a mistake on purpose."""

    page: Path
    line: int
    text: str
    transcript: bool = False

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def split_page(page: Path) -> tuple[list[Snippet], str]:
    """The lines of the page's shell code blocks (continuations joined) and its prose, code
    blocks blanked (so line numbers still count). Python, YAML and text blocks are not commands."""
    code: list[Snippet] = []
    prose_lines: list[str] = []
    block: list[Snippet] = []
    fence: str | None = None
    shell = False
    pending = ""
    pending_line = 0
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        stripped = line.strip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence, block = stripped[:3], []
            shell = stripped[3:].strip() in SHELL_LANGUAGES
            prose_lines.append("")
            continue
        if fence is not None and stripped.startswith(fence):
            fence = None
            prose_lines.append("")
            code += transcript_marked(block)
            continue
        if fence is None:
            prose_lines.append(line)
            continue
        prose_lines.append("")
        if not shell:
            continue
        if not pending:
            pending_line = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        block.append(Snippet(page, pending_line, pending + stripped))
        pending = ""
    return code, "\n".join(prose_lines)


def transcript_marked(block: list[Snippet]) -> list[Snippet]:
    """A block of `$ command` lines and their output is a transcript: mark its lines."""
    prompts = [s.text.startswith("$ ") for s in block if s.text and not s.text.startswith("#")]
    if not (any(prompts) and not all(prompts)):
        return block
    return [Snippet(s.page, s.line, s.text, transcript=True) for s in block]


def inline_code(page: Path, prose: str) -> list[Snippet]:
    """Backticked spans of the prose (a span may wrap onto the next line)."""
    return [
        Snippet(page, prose.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split()))
        for m in re.finditer(r"(`+)([^`]+?)\1", prose)
    ]


@functools.cache
def page_parts(page: Path) -> tuple[list[Snippet], str, list[Snippet]]:
    code, prose = split_page(page)
    return code, prose, inline_code(page, prose)


def tokens(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in prose: not a command
        return []


@dataclass(frozen=True)
class Command:
    """A command a page tells a user to run: an entry point and its arguments."""

    where: str
    text: str
    module: str  # dcgan_lightning[.x], or "make"
    args: tuple[str, ...]
    transcript: bool


def commands(snippet: Snippet) -> list[Command]:
    """`python -m dcgan_lightning...` (also under torchrun/srun) and `make X` in a snippet."""
    words = tokens(snippet.text.removeprefix("$ "))
    found = []
    for i, word in enumerate(words):
        if word == "-m" and i + 1 < len(words) and words[i + 1].startswith("dcgan_lightning"):
            module, rest = words[i + 1], words[i + 2 :]
        elif word == "make" and (i == 0 or words[i - 1] in SHELL_STOPS):
            module, rest = "make", words[i + 1 :]
        else:
            continue
        for j, arg in enumerate(rest):
            if arg in SHELL_STOPS:
                rest = rest[:j]
                break
        found.append(Command(snippet.where, snippet.text, module, tuple(rest), snippet.transcript))
    return found


def all_snippets() -> list[Snippet]:
    out: list[Snippet] = []
    for page in DOCS:
        code, _, spans = page_parts(page)
        out += code + spans
    return out


def all_commands() -> list[Command]:
    return [c for s in all_snippets() for c in commands(s)]


# ---------------------------------------------------------------- composing ---


def config_name(module: str) -> str:
    return "train" if module == "dcgan_lightning" else module.removeprefix("dcgan_lightning.")


@functools.cache
def composed(name: str, overrides: tuple[str, ...]) -> DictConfig:
    """conf/<name>.yaml composed with `overrides`, hydra node included, as `--cfg all` shows."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=True)


def parse(override: str) -> Override:
    return OverridesParser.create().parse_overrides([override])[0]


def composable(args: tuple[str, ...]) -> tuple[str | None, list[str], str | None]:
    """(config name or None, overrides, a reason to skip) for a command's arguments: Hydra's
    flags dropped, `<placeholders>` filled, a sweep reduced to its first value (compose takes
    no sweep)."""
    name = None
    out: list[str] = []
    skip_next = False
    for i, arg in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        if arg in HYDRA_FLAGS:
            continue
        if arg in HYDRA_FLAGS_WITH_VALUE:
            skip_next = True
            continue
        if arg in ("--config-name", "-cn"):
            name = args[i + 1]
            skip_next = True
            continue
        if arg in ("--config-dir", "-cd") or arg.startswith("--config-dir="):
            return None, [], "adds the user's own config folder (not in this repository)"
        if arg.startswith("-"):
            return None, [], f"unknown flag {arg}"
        if arg in ("...", "…"):  # "and more overrides"
            continue
        if arg.startswith("["):
            return None, [], "a usage line ([optional] arguments)"
        arg = re.sub(r"<[^>]*>", "x", arg)
        override = parse(arg)
        key = arg.split("=", 1)[0]
        if override.is_sweep_override():
            try:
                arg = f"{key}={next(iter(override.sweep_string_iterator()))}"
            except Exception:  # an interval: only a sweeper can draw from it
                continue
        elif is_group(override.key_or_group) and PLACEHOLDER.match(str(override.value())):
            continue  # +experiment=NAME: any of them
        out.append(arg)
    return name, out, None


def is_group(key: str) -> bool:
    return "/" in key or (CONF / key).is_dir()


def group_options(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml")}


def compose_case(command: Command) -> None:
    """Compose what `command` would run, or skip with the reason it can't be."""
    if command.transcript:
        pytest.skip(f"{command.where}: a transcript, which may show a mistake on purpose")
    if command.module == "make":
        target, rest = command.args[0], command.args[1:]
        if target != "train":
            return
        args = next((a.removeprefix("ARGS=") for a in rest if a.startswith("ARGS=")), "")
        name, overrides, reason = composable(tuple(shlex.split(args)))
        name = name or "train"
    else:
        name = config_name(command.module)
        named = {"--config-name", "-cn"} & set(command.args)
        if not named and not (CONF / f"{name}.yaml").exists():  # argparse: bench, studies
            assert importlib.util.find_spec(command.module) is not None, (
                f"{command.where}: no module {command.module}"
            )
            pytest.skip(f"{command.module} is not a Hydra app (no conf/{name}.yaml)")
        config, overrides, reason = composable(command.args)
        name = config or name
    if reason:
        pytest.skip(f"{command.where}: {reason}")
    composed(name, tuple(overrides))


# ----------------------------------------------------------- key lookups ---


def has_key(cfg: DictConfig, key: str) -> bool:
    """`key` names a node of `cfg`; below a node that is null (an optional block such as
    model.ema or model.ada, switched on by a dict) any sub-key is allowed. A mandatory key (`???`,
    e.g. data.name of data=hub) exists too."""
    node = cfg
    for part in key.split("."):
        if not OmegaConf.is_dict(node) or part not in node.keys():  # noqa: SIM118 (`in` skips ??? keys)
            return False
        node = node._get_node(part)
        if node._is_none():
            return True
    return True


@functools.cache
def configs_for(first: str) -> list[DictConfig]:
    """The configs a key starting with `first` may live in: every entry point's default, and for
    a train group every option of it and every experiment (they swap data and model)."""
    entries = [p.stem for p in CONF.glob("*.yaml") if p.stem != "train"]
    configs = [composed("train", ())] + [composed(e, ()) for e in entries]
    if is_group(first):
        configs += [composed("train", (f"{first}={o}",)) for o in sorted(group_options(first))]
        configs += [
            composed("train", (f"+experiment={e}",)) for e in sorted(group_options("experiment"))
        ]
    return configs


def key_problem(text: str) -> str | None:
    """Why the override `text` names no config key or option, or None when it does. The
    syntax's own placeholders (`key=value`) and Python keywords (`dynamo=True`) are not keys."""
    if text.lstrip("+") in GENERIC_OVERRIDES or text.split("=", 1)[1] in PYTHON_LITERALS:
        return None
    arg = re.sub(r"<[^>]*>", "x", text)
    try:
        override = parse(arg)
    except Exception as err:
        return f"not a valid override: {err}"
    key = override.key_or_group
    if is_group(key):
        if override.is_delete():
            return None
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
        else:
            values = override.value()
        names = [str(v) for v in (values if isinstance(values, list) else [values])]
        unknown = [v for v in names if v not in group_options(key) and not PLACEHOLDER.match(v)]
        return f"no conf/{key}/{unknown[0]}.yaml" if unknown else None
    if override.is_add() or override.is_force_add():
        return None  # adds a key: nothing has to exist
    if any(has_key(cfg, key) for cfg in configs_for(key.split(".")[0])):
        return None
    return f"no config has the key {key}"


def compose_problem(words: list[str]) -> str | None:
    """Why these overrides, together, do not compose with conf/train.yaml, or None."""
    _, overrides, _ = composable(tuple(words))
    try:
        composed("train", tuple(overrides))
    except Exception as err:
        return str(err).splitlines()[0]
    return None


def override_spans() -> list[Snippet]:
    """Backticked spans that are overrides only (`a.b=1`, `x=1 y=2`): not commands."""
    spans = []
    for page in DOCS:
        for span in page_parts(page)[2]:
            words = tokens(span.text)
            if (
                words
                and all(OVERRIDE.match(w) and "=" in w for w in words)
                and not any(ENV_VAR.match(w.split("=", 1)[0]) for w in words)
            ):
                spans.append(span)
    return spans


# ------------------------------------------------------------------ tests ---


def test_docs_exist() -> None:
    """The pages the README links to exist (the link test then covers them all)."""
    assert (REPO / "docs").is_dir()
    assert len(DOCS) > 5


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(page: Path) -> None:
    _, prose, _ = page_parts(page)
    prose = re.sub(r"(`+)[^`]+?\1", "", prose)  # links in inline code are not links
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
    targets += re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", prose)
    broken = []
    for target in targets:
        if re.match(r"^[a-z][a-z+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


@functools.cache
def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a page (lowercase, punctuation dropped, spaces to dashes)."""
    seen: dict[str, int] = {}
    out = set(re.findall(r"<a (?:name|id)=\"([^\"]+)\"", page.read_text()))
    _, prose = split_page(page)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose, flags=re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
        slug = re.sub(r"[^\w\- ]", "", text.replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


COMMANDS = [c for c in all_commands() if c.module != "make" or c.args[:1] == ("train",)]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where)
def test_commands_compose(command: Command) -> None:
    """The command composes with the real conf/, as `--cfg job` would (nothing runs)."""
    try:
        compose_case(command)
    except (pytest.skip.Exception, AssertionError):
        raise
    except Exception as err:
        pytest.fail(f"{command.where}: `{command.text}` does not compose:\n{err}")


def test_make_targets_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z_][\w-]*):", makefile, flags=re.M))
    named = {(c.where, c.args[0]) for c in all_commands() if c.module == "make" and c.args}
    missing = sorted(f"{where}: make {t}" for where, t in named if t not in targets)
    assert not missing, f"make targets that the Makefile lacks: {missing}"
    assert named, "the docs name no make target"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_backticked_overrides_name_real_keys(page: Path) -> None:
    problems = []
    for span in (s for s in override_spans() if s.page == page):
        words = tokens(span.text)
        if any(w.startswith("hydra") for w in words):  # Hydra's own keys depend on the groups
            problem = compose_problem(words)
            if problem:
                problems.append(f"{span.where}: `{span.text}`: {problem}")
            continue
        for word in words:
            problem = key_problem(word)
            if problem:
                problems.append(f"{span.where}: `{word}`: {problem}")
    assert not problems, "\n".join(problems)


def tables(page: Path) -> list[list[list[str]]]:
    """The page's markdown tables, as rows of cells (the header first, the |---| row dropped)."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*page_parts(page)[1].splitlines(), ""]:
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def names_in(cell: str) -> set[str]:
    """Option names in a cell: backticked words, `+experiment=x` and `model=x` reduced to x."""
    return {re.sub(r"^\+{0,2}[\w/]+=", "", n) for n in re.findall(r"`([^`]+)`", cell)}


def option_tables() -> list[tuple[str, str, set[str]]]:
    """(where, group, names listed) for each option list in the docs: a table whose first
    header cell is a group name (a row per option), or a `group | options` table (a row per
    group, its options backticked; a cell without backticks points elsewhere and is skipped)."""
    out = []
    for page in DOCS:
        for table in tables(page):
            header = [re.sub(r"[`*]", "", c).lower() for c in table[0]]
            where = str(page.relative_to(REPO))
            if header[0] in LISTED_GROUPS:
                names = set().union(*(names_in(row[0]) for row in table[1:]))
                out.append((where, header[0], names))
            elif header[:2] == ["group", "options"]:
                for row in table[1:]:
                    group = re.sub(r"[`*]", "", row[0])
                    if (CONF / group).is_dir() and "`" in row[1]:
                        out.append((where, group, names_in(row[1])))
    return out


def test_option_lists_match_conf() -> None:
    lists = option_tables()
    wrong = [
        f"{where}: {group}: docs list {sorted(names)}, conf/{group}/ has "
        f"{sorted(group_options(group))}"
        for where, group, names in lists
        if names != group_options(group)
    ]
    assert not wrong, "\n".join(wrong)
    missing = set(LISTED_GROUPS) - {group for _, group, _ in lists}
    assert not missing, f"no page lists the options of {sorted(missing)}"
