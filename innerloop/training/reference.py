"""The reference of every config key, generated from the dataclasses of ``training.config`` and the registry.

A key's meaning is the trailing ``# ...`` comment of its field (read with ``inspect`` and
``tokenize``, so the dataclass stays the one place to document a key); a comment on a line of
its own inside a class starts a group of keys (e.g. "Image datasets only:"). The ``algorithm``
section lists the keys every algorithm has, then each registered algorithm's own keys (its
options dataclass). ``innerloop config`` prints :func:`config_reference`; ``docs/config.md`` is
its output, checked by the tests.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import textwrap
import tokenize
from dataclasses import dataclass

from omegaconf import MISSING

from .. import registry
from ..registry import AlgorithmOptions
from .config import Config


@dataclass(frozen=True)
class Key:
    """One config key: ``section.name``, its type, its default (as written in YAML), its meaning and group."""

    section: str
    name: str
    type: str
    default: str
    meaning: str
    group: str = ""

    @property
    def dotted(self) -> str:
        """``section.name`` (``name`` alone for a top-level key)."""
        return f"{self.section}.{self.name}" if self.section else self.name


def field_comments(cls: type) -> dict[str, tuple[str, str]]:
    """``{field: (meaning, group)}`` of a dataclass: each field's trailing comment and the own-line comment above it.

    A trailing comment that the next lines continue (comment-only lines indented past the
    field) is joined to it. Fields without a comment map to ``("", group)``.
    """
    source = textwrap.dedent(inspect.getsource(cls))
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    out: dict[str, tuple[str, str]] = {}
    group, depth, line_start, last_field, field_line = "", 0, True, None, 0
    for i, tok in enumerate(tokens):
        if tok.type in (tokenize.NEWLINE, tokenize.NL):
            line_start = True
            continue
        if tok.type in (tokenize.INDENT, tokenize.DEDENT):
            continue
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if line_start:  # an own-line comment: a continuation of the last field's, or a new group
                if last_field and out[last_field][0] and tok.start[1] > 4 and not text.endswith(":"):
                    meaning, g = out[last_field]
                    out[last_field] = (f"{meaning} {text}", g)
                else:
                    group, last_field = text.rstrip(":"), None
            elif last_field is not None and tok.start[0] == field_line:
                out[last_field] = (text, out[last_field][1])
            continue
        if (
            line_start
            and depth == 0
            and tok.type == tokenize.NAME
            and tok.start[1] == 4
            and tokens[i + 1].string == ":"
            and tok.string in {f.name for f in dataclasses.fields(cls)}
        ):
            last_field, field_line = tok.string, tok.start[0]
            out[last_field] = ("", group)
        line_start = False
    return out


def _yaml(value) -> str:
    """A default as it is written in a YAML config or an override."""
    if value is MISSING:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def _type(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if text.endswith(" | None"):  # an optional key: `int | None` reads "int or null" in YAML terms
        return f"{text.removesuffix(' | None')} or null"
    return text


def option_comments(cls: type) -> dict[str, tuple[str, str]]:
    """:func:`field_comments` of a dataclass and of the dataclasses it derives from (a field's own class wins)."""
    out: dict[str, tuple[str, str]] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(field_comments(klass))
    return out


def _keys_of(cls: type, section: str, instance=None, skip: tuple[str, ...] = (), group: str = "") -> list[Key]:
    keys, comments = [], option_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if instance is not None:
            default = getattr(instance, f.name)
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and not section:
            keys += algorithm_keys() if f.name == "algorithm" else _keys_of(type(default), f.name)
            continue
        meaning, own_group = comments.get(f.name, ("", ""))
        keys.append(Key(section, f.name, _type(f.type), _yaml(default), meaning, group or own_group))
    return keys


def algorithm_keys() -> list[Key]:
    """The ``algorithm`` keys: those every algorithm has, then each registered algorithm's own (group: its name)."""
    keys = _keys_of(AlgorithmOptions, "algorithm")
    common = tuple(k.name for k in keys)
    for name, entry in registry.algorithms().items():
        keys += _keys_of(entry.options, "algorithm", entry.options(name=name), skip=common, group=name)
    return keys


def config_keys(cls: type = Config, section: str = "") -> list[Key]:
    """Every key of ``cls`` (default :class:`Config`), sections expanded, in declaration order; the algorithm
    section as :func:`algorithm_keys` (a key several algorithms have appears once for each)."""
    return _keys_of(cls, section)


def capabilities(entry: registry.AlgorithmEntry) -> str:
    """What an algorithm runs on and accepts, in a few words (``regression, classification; compile``)."""
    flags = [
        flag
        for flag, on in (
            ("compile", entry.compile),
            ("checkpoint_steps", entry.checkpoint_steps),
            ("update_rule", entry.update_rule),
            ("no inner loop", entry.forward_pass),
            ("any eval.ways", not entry.fixed_ways and "classification" in entry.kinds),
        )
        if on
    ]
    return ", ".join(entry.kinds) + (f"; {', '.join(flags)}" if flags else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_reference() -> str:
    """Markdown: one table per section (key, type, default, meaning), from the config dataclasses."""
    lines = [
        "# Config reference",
        "",
        "Every key of an innerloop config, generated from `innerloop/training/config.py` and the options of the",
        "registry's algorithms (`innerloop/registry/options.py`) by `innerloop config`",
        "(do not edit this file by hand: `innerloop config > docs/config.md` rewrites it).",
        "A run merges the defaults below <- a preset or YAML file (`--config`) <- `section.key=value` overrides;",
        "`innerloop presets --show NAME` prints a preset, `innerloop config --show NAME [overrides]` the merged config.",
        "",
    ]
    sections: dict[str, list[Key]] = {}
    for key in config_keys():
        sections.setdefault(key.section, []).append(key)
    for section, keys in sections.items():
        if section == "algorithm":
            lines += _algorithm_tables(keys)
            continue
        if section:
            cls = type(getattr(Config(), section))
            doc = (inspect.getdoc(cls) or "").replace("``", "`")
            lines += [f"## {section}", "", *([" ".join(doc.split()), ""] if doc else [])]
        else:
            lines += ["## top level", ""]
        lines += _table(keys)
    return "\n".join(lines)


def _table(keys: list[Key]) -> list[str]:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    group = ""
    for k in keys:
        if k.group != group:
            group = k.group
            lines.append(f"| *{_cell(group)}:* | | | |")
        lines.append(f"| `{k.dotted}` | {_cell(k.type)} | `{_cell(k.default)}` | {_cell(k.meaning)} |")
    return [*lines, ""]


def _algorithm_tables(keys: list[Key]) -> list[str]:
    """The common keys, then one line per algorithm (what it runs on and accepts) and a table of its own keys."""
    lines = [
        "## algorithm",
        "",
        "The meta-learner (`algorithm.*`): `algorithm.name` picks an entry of `innerloop.registry`, whose keys are "
        "those every algorithm has and its own, listed under its name; a key it lacks is refused. Its capabilities "
        "(what it runs on; compile, checkpoint_steps, update_rule where it accepts them) follow the name.",
        "",
        *_table([k for k in keys if not k.group]),
    ]
    for name, entry in registry.algorithms().items():
        own = [k for k in keys if k.group == name]
        lines += [f"### algorithm.name={name}", "", f"{capabilities(entry)}.", ""]
        lines += _table([dataclasses.replace(k, group="") for k in own]) if own else ["Only the common keys.", ""]
    return lines
