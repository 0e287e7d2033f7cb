"""Every problem of a command line in one message (exit status 2, as click's own errors).

Click stops at the first value it cannot convert (``--epochs abc``, ``--jobs 0``, a bad
choice of ``--mode``), which would hide the command's other problems (an unknown method,
a bad ``--option`` value, a method that needs ``--mode auxiliary``). Here every parameter
of a :class:`Gathering` command *records* such a failure instead, with what to give
instead, and takes the value ``None`` (= not given); the command then runs its own checks
inside :func:`gathering`, which reports click's problems and its own together as one
:class:`CommandLineError`, before anything is started::

    @main.command()            # the group's commands are Gathering commands
    @click.option("--epochs", type=int)
    def train(epochs):
        with gathering() as problems:   # click's problems so far
            problems.append(...)        # the command's own
            plan(config)                # a ConfigError's problems are added to the list

Options the command does not know (``--epoch 3``, with the value after them), an option
without its value, a flag given a value and extra arguments are gathered the same way.
Problems found *while running* (a damaged checkpoint, a run folder that holds another run)
are not command-line problems: they keep their exit status 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click

from dynamtl.registry import RegistryError
from dynamtl.train.config import ConfigError

PROBLEMS = "dynamtl.problems"
"""The key of ``click.Context.meta`` under which a command's click problems are recorded."""
GATHERED = "dynamtl.gathered"
"""The key of ``click.Context.meta`` that says the command called :func:`gathering`."""


class CommandLineError(click.UsageError):
    """Every problem of a command line, one per line, each saying what to do instead;
    click prints the command's usage above it and exits with status 2."""

    def __init__(self, problems: list[str], ctx: click.Context | None = None) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n{listed}", ctx)


def recorded(ctx: click.Context) -> list[str]:
    """The problems recorded while click parsed the command line of ``ctx``."""
    problems: list[str] = ctx.meta.setdefault(PROBLEMS, [])
    return problems


@contextlib.contextmanager
def gathering() -> Iterator[list[str]]:
    """The list of the current command line's problems (click's so far), to which the block
    adds the command's own; a :class:`~dynamtl.train.config.ConfigError` or
    :class:`~dynamtl.registry.RegistryError` raised in the block adds its problems too.
    When the block ends with any problem, :class:`CommandLineError` lists them all."""
    ctx = click.get_current_context()
    ctx.meta[GATHERED] = True
    problems = list(recorded(ctx))
    try:
        yield problems
    except ConfigError as error:
        raise CommandLineError([*problems, *error.problems], ctx) from error
    except RegistryError as error:
        raise CommandLineError([*problems, *str(error).splitlines()], ctx) from error
    if problems:
        raise CommandLineError(problems, ctx)


def what_to_give(param: click.Parameter) -> str:
    """What ``param`` takes, in words: the fix of a value click refused."""
    kind, flag = param.type, _flag(param)
    if isinstance(kind, click.Choice):
        return f"choose one of {', '.join(map(str, kind.choices))} (e.g. {flag} {kind.choices[0]})"
    if isinstance(kind, click.IntRange):
        return f"give an integer {kind._describe_range()} (e.g. {flag} {kind.min if kind.min is not None else 1})"
    if isinstance(kind, click.FloatRange):
        return f"give a number {kind._describe_range()}"
    if isinstance(kind, click.Path):
        what = "folder" if not kind.file_okay else "file" if not kind.dir_okay else "file or folder"
        return f"give the path of an existing {what}" if kind.exists else f"give the path of a {what}"
    examples = {click.INT: ("an integer", "3"), click.FLOAT: ("a number", "0.01"),
                click.BOOL: ("true or false", "true")}
    what, example = examples.get(kind, (kind.name, "VALUE"))
    return f"give {what} (e.g. {flag} {example})"


def _flag(param: click.Parameter) -> str:
    return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name


class _Gathers(click.Parameter):
    """A parameter that records a value click refuses (``BadParameter``: a wrong type, a
    choice not offered, a number out of range, a missing path or argument) in the context's
    problems, with :func:`what_to_give`, and then counts as not given (``None``)."""

    def handle_parse_result(self, ctx: click.Context, opts: Any, args: list[str]) -> tuple[Any, list[str]]:
        try:
            return super().handle_parse_result(ctx, opts, args)
        except click.BadParameter as error:
            if ctx.resilient_parsing:  # shell completion
                raise
            recorded(ctx).append(f"{error.format_message().rstrip('.')}: {what_to_give(self)}")
            if self.expose_value:
                ctx.params[self.name] = None
            return None, args


class _GatheredOption(_Gathers, click.Option):
    pass


class _GatheredArgument(_Gathers, click.Argument):
    pass


_GATHERED: dict[type, type] = {click.Option: _GatheredOption, click.Argument: _GatheredArgument}


class Gathering(click.Command):
    """A command that gathers its command line's problems instead of stopping at the first
    (see the module's docstring): every parameter records the values click refuses, and
    unknown options and extra arguments are recorded, not fatal. The command's callback
    must end its checks with :func:`gathering`, which reports them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["context_settings"] = {**(kwargs.get("context_settings") or {}), "allow_extra_args": True}
        super().__init__(*args, **kwargs)
        for param in self.params:
            if not isinstance(param, _Gathers):
                if type(param) not in _GATHERED:
                    raise TypeError(f"{self.name}: a parameter of class {type(param).__name__} cannot gather")
                param.__class__ = _GATHERED[type(param)]  # same fields; only handle_parse_result differs

    def invoke(self, ctx: click.Context) -> Any:
        result = super().invoke(ctx)
        if recorded(ctx) and not ctx.meta.get(GATHERED):
            raise RuntimeError(f"the command {self.name!r} did not report its command line's problems with gathering()")
        return result

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Click's parsing, but an unknown option (with the value after it, if any), an
        option without its value or a flag given a value is recorded and left out, and
        extra arguments are recorded."""
        args = list(args)
        while True:
            try:
                rest = super().parse_args(ctx, list(args))  # the parser consumes its list
                break
            except (click.NoSuchOption, click.BadOptionUsage) as error:
                at = _position(args, error.option_name)
                if at is None or ctx.resilient_parsing:
                    raise
                dropped = [args.pop(at)]
                if isinstance(error, click.NoSuchOption) and "=" not in dropped[0] and at < len(args) \
                        and not args[at].startswith("-"):
                    dropped.append(args.pop(at))  # its value, most likely
                recorded(ctx).append(self._misused(ctx, error, " ".join(dropped)))
        if rest and not ctx.resilient_parsing:
            takes = " ".join(p.human_readable_name for p in self.get_params(ctx) if isinstance(p, click.Argument))
            recorded(ctx).extend(f"unexpected argument {token!r}: `{ctx.command_path}` takes "
                                 f"{takes or 'no arguments'} besides its options" for token in rest)
        ctx.args = []
        return []


    def _misused(self, ctx: click.Context, error: click.NoSuchOption | click.BadOptionUsage, given: str) -> str:
        """The problem of an unknown option, an option without its value or a flag given one."""
        name = error.option_name
        if isinstance(error, click.NoSuchOption):
            close = error.possibilities
            return (f"no such option {name} (in {given!r}): "
                    + (f"did you mean {' or '.join(close)}?" if close else f"see `{ctx.command_path} --help`"))
        param = next(p for p in self.get_params(ctx) if isinstance(p, click.Option)
                     and name in (*p.opts, *p.secondary_opts))
        if param.is_flag:
            return f"{name} is a flag and takes no value (in {given!r}): give {name} alone"
        return f"{name} needs a value (in {given!r}): {what_to_give(param)}"


def _position(args: list[str], option: str) -> int | None:
    """The index of the last token of ``args`` that is ``option`` (``--x`` or ``--x=…``)."""
    found = [i for i, token in enumerate(args) if token == option or token.startswith(f"{option}=")]
    return found[-1] if found else None
