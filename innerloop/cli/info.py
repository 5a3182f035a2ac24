"""The commands that only print: ``presets`` (the built-in presets) and ``config`` (every key, or a merged config)."""

from __future__ import annotations

import typer


def presets(
    show: str | None = typer.Option(
        None, "--show", metavar="NAME", help="Print this preset's YAML, comments included."
    ),
) -> None:
    """List the built-in presets with a line on each, or print one (--show NAME)."""
    from ..training.config import preset_description, preset_names, preset_text

    if show is not None:
        typer.echo(preset_text(show), nl=False)
        return
    names = preset_names()
    width = max(map(len, names))
    for name in names:
        typer.echo(f"{name:<{width}}  {preset_description(name)}")
    typer.echo("\n`innerloop presets --show NAME` prints a preset; `innerloop config` lists every config key.")


def config_command(
    show: str | None = typer.Option(
        None, "--show", metavar="PRESET", help="Print the merged config of a preset or YAML file."
    ),
    overrides: list[str] | None = typer.Argument(None, help="With --show: section.key=value overrides to apply."),
) -> None:
    """Print the reference of every config key (type, default, meaning), or a merged config (--show)."""
    from ..training.config import load_config, to_yaml
    from ..training.reference import config_reference

    if show is None:
        if overrides:
            from ..errors import ConfigError

            raise ConfigError(
                "overrides apply to a config: give --show PRESET (e.g. innerloop config --show maml-sine train.iterations=5)"
            )
        typer.echo(config_reference(), nl=False)
        return
    typer.echo(to_yaml(load_config(show, overrides or [])), nl=False)
